"""Snibe MAGLUMI chemiluminescence immunoassay analysers (MAGLUMI 800, 1000, 2000, X3, X8...).

As the MAGLUMI in the corpus sends it (astm/snibe-maglumi_log_no-frame-numbers.txt):

* The link departs from E1381: a whole message (H to L) travels in one frame, up to a few
  hundred characters, with no frame number after STX and no checksum after ETX.
* H.4 is a password (``PSWD``), H.5 the name set on the analyser (``Maglumi User`` by
  default); H.10 is ``Lis``, H.13 ``E1394-97`` and H.14 a date without time.
* One O per sample, O.3 = the sample id, O.5 repeating ``^^^<test>``.
* R.3 = ``^^^<test>``, the test being the reagent kit's name, a generation suffix
  included (``TSH II``, ``Vit B12 II``); R.6 is the reference range written
  ``0.75 to 2.1``; R.9 (result status) is left empty; R.13 is when the test completed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

from drivers.base import Driver
from middleware.astm.frames import FrameTolerances

# Kit names for the laboratory's immunoassays (the captured analyser reports TSH II, TT3 II,
# TT4 II, Vit B12 II). A first-generation kit (no " II") measures the same analyte; the
# second-generation name comes first, so it is the one a host-query answer asks for. A site
# whose menu names a kit otherwise maps it in the instrument's test_map.
_KITS = {
    "TSH": "TSH",
    "FT4": "FT4",
    "FT3": "FT3",
    "TT3": "TT3",
    "TT4": "TT4",
    "Insulin": "INS",
    "HCG/β-HCG": "HCG",
    "Vit B12": "B12",
    "Folate": "FOL",
    "Ferritin": "FER",
    "Total PSA": "PSA",
    "CA 125": "CA125",
}


class SnibeMaglumiDriver(Driver):
    name = "snibe_maglumi"
    description = "Snibe MAGLUMI immunoassay (MAGLUMI 800 to X8)"
    sender_pattern = re.compile(r"^Maglumi\b", re.I)
    tolerances = FrameTolerances(long_frames=True, no_frame_numbers=True, no_checksum=True)
    test_map: ClassVar[Mapping[str, str]] = {
        f"{kit}{generation}": lab for kit, lab in _KITS.items() for generation in (" II", "")
    }
