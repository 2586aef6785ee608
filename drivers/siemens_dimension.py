"""Siemens Dimension Vista 500 and 1500 (chemistry and immunoassay), ASTM.

What this driver reads, and on what ground
-------------------------------------------
Neither Siemens' LIS interface specification for the Vista nor any Vista capture was found
in the public material searched for this driver (public repositories, issue threads,
documentation sites, stored web pages). The driver is therefore the CLSI LIS2-A2 (E1394)
reading of the base class under the Vista's name; it changes nothing, since no source
shows where the Vista's records depart from the standard:

* H.5 is the sender: the family is recognised when it says ``Dimension`` or ``Vista``
  (any case, any padding: ``Dimension Vista^...``, ``VISTA1500``). No layout score: no
  field is known to be the Vista's alone, and a guessed one would take other families'
  messages.
* O.3 the sample id, else the first component of O.4; P.3 (else P.4, P.5) the patient.
* R.3 ``^^^<test>``: the test's abbreviation as the analyser names its method (``GLU``,
  ``CREA``, ``TSH``...), passed through: with no public Vista method list to map from, the
  laboratory's names are set per instrument in ``test_map``. R.4 the value, R.5 units,
  R.6 range, R.7 the LIS2-A2 flags (``L``, ``H``, ``LL``, ``HH``, ``<``, ``>``, ``N``,
  ``A``) as sent, R.9 status, R.13 the completion time; C records of type I after an R
  are its instrument flags.
* A control is the standard's: O.12 (or H.12) = ``Q``, material = the sample id. No
  control lot, dilution or Flex reagent cartridge lot is read: where the Vista writes them,
  if it does, is not in any public source. Check a capture (``lis-middleware decode``)
  before relying on any of this.
* Host query: the standard's Q record (ids in Q.3), answered the standard's way.

The Dimension EXL, RxL and Xpand: not ASTM
------------------------------------------
The Dimension EXL 200, EXL with LM, RxL Max and Xpand Plus talk to a host in Siemens' own
"Dimension LIS protocol": the Dimension interface manuals (PN D00396 Rev. 2, 2011; 11348004
Rev. 02, 2019), as far as their public copies could be read, describe that protocol, and no
ASTM E1394 mode for these models was found there or anywhere else. It is not supported:
our link layer speaks E1381 only. Its bytes, as public captures and a public Xpand Plus
interface show them (hmislk/hmis-analyzer-middleware's logs, roy-harmon/RosieLIS; both MIT;
read, nothing copied):

* Every message is one block: STX (0x02), a capital letter naming the message, FS (0x1C),
  its fields each ended by FS, a two-digit upper-case hex checksum (the byte sum from the
  letter to the last FS, modulo 256), ETX (0x03). No frame number, no CR LF, no ENQ/EOT
  around each transfer; the receiver answers ACK or NAK.
* From the analyser: ``P`` poll (every 15 s or so when idle:
  ``<STX>P<FS>DIM1<FS>0<FS>1<FS>0<FS>78<ETX>``), ``I`` query for a sample, ``R`` result
  (patient id, sample no., sample type, location, priority, time, cups, dilution, number
  of tests, then name, value, units and error of each), ``C`` calibration, ``M`` request
  acceptance. From the host: ``N`` no request (``<STX>N<FS>6A<ETX>``), ``D`` sample
  request, ``M`` result acceptance.

A lab recognises it by ``02 50 1C`` (STX ``P`` FS) about every 15 s in a serial or TCP
capture. The daemon's link, waiting for ENQ, passes those blocks over without a word (after
a lone ENQ, which the public logs also show, it answers ACK, then NAKs the block: ``frame
not closed by C1 C2 CR LF``); the analyser, never answered ACK, reports a host
communication error. ``lis-middleware decode`` on such a capture says ``frame number
missing or invalid: 'P'`` and ``record type 'P' not followed by the field delimiter``.
"""

from __future__ import annotations

import re

from drivers.base import Driver


class SiemensDimensionDriver(Driver):
    name = "siemens_dimension"
    description = "Siemens Dimension Vista 500 and 1500 (chemistry and immunoassay, ASTM)"
    # Inside a longer name ("AltaVista") the word says nothing of the analyser.
    sender_pattern = re.compile(r"DIMENSION|(?<![A-Z])VISTA(?![A-Z])", re.IGNORECASE)
