"""HL7 v2 to and from the laboratory information system: MLLP framing, messages."""
