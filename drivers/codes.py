"""Test codes analysers of several families share, mapped to the laboratory's codes."""

from __future__ import annotations

from collections.abc import Mapping

#: The abbreviated haematology parameters of the Horiba and Mindray families (NEU#, LYM%...).
HAEMATOLOGY: Mapping[str, str] = {
    "WBC": "WBC",
    "RBC": "RBC",
    "HGB": "HGB",
    "HCT": "HCT",
    "PLT": "PLT",
    "MCV": "MCV",
    "MCH": "MCH",
    "MCHC": "MCHC",
    "RDW-CV": "RDW-CV",
    "RDW-SD": "RDW-SD",
    "MPV": "MPV",
    "PCT": "PCT",
    "PDW": "PDW",
    "NEU#": "NEUT#",
    "NEU%": "NEUT%",
    "LYM#": "LYMPH#",
    "LYM%": "LYMPH%",
    "MON#": "MONO#",
    "MON%": "MONO%",
    "EOS#": "EO#",
    "EOS%": "EO%",
    "BAS#": "BASO#",
    "BAS%": "BASO%",
    "RET#": "RET#",
    "RET%": "RET%",
}
