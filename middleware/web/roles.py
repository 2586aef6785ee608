"""Who may do what (REQUIREMENTS D6, D7): the roles of the people who use the status page
and the control API, and the actions each may take. Every route names the action it
serves; the server checks it for every request, whatever the page showed.

The roles follow the laboratory's work: a technician runs the analysers and QC, a
validator releases and rejects results, a biologist also decides what only a biologist
may (early release, control limits, rule changes), lab IT keeps the system running
without clinical acts, and a viewer only looks.
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    VIEWER = "viewer"
    TECHNICIAN = "technician"
    VALIDATOR = "validator"
    BIOLOGIST = "biologist"
    LAB_IT = "lab-it"


class Action(enum.Enum):
    VIEW = "view"
    """The pages and figures that show no patient result: instruments, QC, the LIS link."""
    VIEW_PATIENT_RESULTS = "view-patient-results"
    """Held results with their values and the patient's previous ones (each view audited, D8)."""
    COMMENT = "comment"
    REQUEST_RERUN = "request-rerun"
    RECORD_CORRECTIVE_ACTION = "record-corrective-action"
    RECORD_QC_EVENT = "record-qc-event"
    """Calibration or maintenance (voids QC), or lifting a method lock."""
    RELEASE = "release"
    REJECT = "reject"
    EARLY_RELEASE = "early-release"
    APPROVE_LIMITS = "approve-limits"
    RELOAD_RULES = "reload-rules"
    RECALL_REAGENT_LOT = "recall-reagent-lot"
    OUTBOX_RETRY = "outbox-retry"
    OUTBOX_DISMISS = "outbox-dismiss"


_CLINICAL_LOOK = {Action.VIEW, Action.VIEW_PATIENT_RESULTS}
_BENCH = _CLINICAL_LOOK | {
    Action.COMMENT,
    Action.REQUEST_RERUN,
    Action.RECORD_CORRECTIVE_ACTION,
    Action.RECORD_QC_EVENT,
}
_VALIDATION = _BENCH | {
    Action.RELEASE,
    Action.REJECT,
    Action.OUTBOX_RETRY,
    Action.OUTBOX_DISMISS,
}

PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset(_CLINICAL_LOOK),
    Role.TECHNICIAN: frozenset(_BENCH),
    Role.VALIDATOR: frozenset(_VALIDATION),
    Role.BIOLOGIST: frozenset(
        _VALIDATION
        | {
            Action.EARLY_RELEASE,
            Action.APPROVE_LIMITS,
            Action.RELOAD_RULES,
            Action.RECALL_REAGENT_LOT,
        }
    ),
    # The link to the LIS, no clinical act and no patient's result. Lab IT edits the rule
    # files but does not put them in force: a reload is the biologist's approval of the
    # change (D7).
    Role.LAB_IT: frozenset({Action.VIEW, Action.OUTBOX_RETRY}),
}


def allowed(role: Role, action: Action) -> bool:
    return action in PERMISSIONS[role]


__all__ = ["PERMISSIONS", "Action", "Role", "allowed"]
