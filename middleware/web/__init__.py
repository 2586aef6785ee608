"""The daemon's HTTP side: the control API now, the status page later."""
