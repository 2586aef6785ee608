"""Tables. The migrations in ``migrations/`` create them; this module describes them for
queries. Times are stored in UTC.

Text columns have no length limit: whatever an analyser sends is kept as sent, on SQLite
and PostgreSQL alike. The only limit is PostgreSQL's on the size of an index entry, which
``ingest.MAX_KEY_BYTES`` keeps the indexed identifiers under."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# Every byte a connection received, in consecutive spans: each row holds the bytes from
# ``stream_offset`` on, and says what became of them (``outcome``: message, duplicate,
# quarantine, control, noise, partial, repeat; refused: an HL7 message the store could not
# keep, answered AR for the analyser to send it again). Never updated or deleted
# (triggers refuse it).
raw_transmissions = Table(
    "raw_transmissions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("connection", Text, nullable=False),
    Column("instrument", Text, nullable=False),
    Column("direction", Text, nullable=False, default="in"),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("message_id", Integer, ForeignKey("messages.id"), nullable=True),
    Column("duplicate", Boolean, nullable=False, default=False),
    Column("connection_id", Text),
    Column("stream_offset", BigInteger),
    Column("last_received_at", DateTime(timezone=True)),
    Column("outcome", Text),
)
Index("ix_raw_transmissions_message", raw_transmissions.c.message_id)
Index(
    "ix_raw_transmissions_stream",
    raw_transmissions.c.connection_id,
    raw_transmissions.c.stream_offset,
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("connection", Text, nullable=False),
    Column("sender", Text, nullable=False, default=""),
    Column("driver", Text, nullable=False, server_default=""),
    Column("content_sha256", Text, nullable=False),
    Column("record_count", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("problems", Text, nullable=False, default=""),
    Column("settled_at", DateTime(timezone=True)),
    # When the analyser showed it had our ACK (EOT or its next frame): an identical
    # message after that is a new one (a re-run), before it a re-send.
)
Index("ix_messages_content", messages.c.instrument, messages.c.content_sha256)

specimens = Table(
    "specimens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("specimen_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False, default=""),
    Column("specimen_type", Text, nullable=False, default=""),
    Column("container", Text, nullable=False, default=""),
    Column("collected_at", DateTime(timezone=True)),
    Column("received_at", DateTime(timezone=True)),
    Column("analysed_at", DateTime(timezone=True)),
    Column("first_message_id", Integer, ForeignKey("messages.id"), nullable=False),
    # The patient's sex and birth date as the specimen's first message gave them: every
    # later message about its results (released after a hold) carries them to the LIS.
    Column("patient_sex", Text, nullable=False, default=""),
    Column("patient_birth_date", Date),
    UniqueConstraint("specimen_id", name="uq_specimens_specimen_id"),
)

_result_columns = (
    ("specimen_id", Text),
    ("patient_id", Text),
    ("test_code", Text),
    ("instrument_test_code", Text),
    ("value_text", Text),
    ("units", Text),
    ("reference_range", Text),
    ("abnormal_flags", Text),
    ("instrument_flags", Text),
    ("status", Text),
    ("operator", Text),
    ("instrument", Text),
    ("module", Text),
    ("comments", Text),
    ("dilution", Text),
)


def _result_table(name: str, *extra: Column[object]) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True),
        Column("message_id", Integer, ForeignKey("messages.id"), nullable=False),
        *(Column(col, kind, nullable=False, default="") for col, kind in _result_columns),
        Column("value_number", Numeric),
        Column("censor", Text, nullable=False, default=""),
        Column("sequence", Integer, nullable=False, default=0),
        Column("completed_at", DateTime(timezone=True)),
        Column("stored_at", DateTime(timezone=True), nullable=False),
        *extra,
    )


results = _result_table("results")
Index("ix_results_specimen", results.c.specimen_id)
Index("ix_results_test", results.c.instrument, results.c.test_code)
Index("ix_results_patient_test_id", results.c.patient_id, results.c.test_code, results.c.id)

control_results = _result_table(
    "control_results",
    Column("control_material", Text, nullable=False),
    Column("lot", Text, nullable=False, default=""),
    Column("level", Text, nullable=False, default=""),
)
Index("ix_control_results_test", control_results.c.instrument, control_results.c.test_code)

reagent_lots = Table(
    "reagent_lots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("reagent", Text, nullable=False),
    Column("lot", Text, nullable=False),
    Column("kind", Text, nullable=False, default="reagent"),
    Column("manufacturer", Text, nullable=False, default=""),
    Column("serial", Text, nullable=False, default=""),
    Column("expiry", Date),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("reagent", "lot", name="uq_reagent_lots"),
)

reagent_uses = Table(
    "reagent_uses",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("reagent_lot_id", Integer, ForeignKey("reagent_lots.id"), nullable=False),
    Column("result_id", Integer, ForeignKey("results.id")),
    Column("control_result_id", Integer, ForeignKey("control_results.id")),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False, default=""),
    Column("calibration_id", Text, nullable=False, default=""),
    Column("used_at", DateTime(timezone=True)),
)
Index("ix_reagent_uses_lot", reagent_uses.c.reagent_lot_id)
Index("ix_reagent_uses_result", reagent_uses.c.result_id)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("specimen_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False, default=""),
    Column("test_codes", Text, nullable=False),
    Column("priority", Text, nullable=False, default="R"),
    Column("source", Text, nullable=False, default="lis"),
    Column("ordered_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("collected_at", DateTime(timezone=True)),
    Column("specimen_type", Text, nullable=False, default=""),
    Column("container", Text, nullable=False, default=""),
    Column("placer_order", Text, nullable=False, default=""),
)
Index("ix_orders_specimen", orders.c.specimen_id)
Index("ix_orders_placer", orders.c.placer_order)

# The LIS's order messages taken, by sender (MSH-3 and MSH-4) and control id (MSH-10): one
# sent again because our answer was lost is answered, not applied a second time. Keyed by
# the SHA-256 of both: a control id may be longer than an index entry can be.
order_messages = Table(
    "order_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key_sha256", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("control_id", Text, nullable=False),
    Column("content_sha256", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("key_sha256", name="uq_order_messages_key"),
)

# Orders (and cancellations) waiting to be sent to an analyser that takes a downloaded
# worklist; written with the orders they come from, marked once the analyser has them.
worklist_downloads = Table(
    "worklist_downloads",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("specimen_id", Text, nullable=False),
    Column("patient_id", Text, nullable=False, default=""),
    Column("test_codes", Text, nullable=False),
    Column("priority", Text, nullable=False, default="R"),
    Column("action", Text, nullable=False),  # new, cancel
    Column("state", Text, nullable=False, default="pending"),  # pending, sent, refused
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
)
Index(
    "ix_worklist_downloads_pending",
    worklist_downloads.c.instrument,
    worklist_downloads.c.state,
    worklist_downloads.c.id,
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("raw_id", Integer, ForeignKey("raw_transmissions.id")),
    Column("message_id", Integer, ForeignKey("messages.id")),
    Column("connection", Text, nullable=False),
    Column("instrument", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Column("resolved_by", Text),
)

# Who did what and when (store/audit.py). Never updated; deleted only by a purge of what
# an archive holds. Each entry carries the hash of the one before it and its own, over
# both: an entry changed or removed breaks the chain (``lis-middleware audit verify``).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    Column("prev_hash", Text),  # SHA-256, hex; NULL only in a database not migrated
    Column("hash", Text),
)

# Every decision the engine made about a result; a later decision (QC came in, a person
# released it) is a new row: the history of why a result was held stays. action: release,
# hold, reject, or superseded (a re-run result of its specimen and test replaced it).
decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False),
    Column("specimen_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("reasons", Text, nullable=False, default=""),
    Column("findings", Text, nullable=False, default="[]"),
    Column("urgent", Boolean, nullable=False, default=False),
    Column("comments", Text, nullable=False, default=""),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", Text, nullable=False, default="engine"),
)
Index("ix_decisions_result", decisions.c.result_id)
Index("ix_decisions_test", decisions.c.instrument, decisions.c.test_code, decisions.c.action)

# The results whose latest decision is a hold: a row per result while it is held, removed
# by the decision that ends the hold. Kept with the decisions, in their transaction.
open_holds = Table(
    "open_holds",
    metadata,
    Column("result_id", Integer, ForeignKey("results.id"), primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False),
    Column("held_since", DateTime(timezone=True), nullable=False),
    # When it went to the LIS as preliminary while held (Q13); null when it did not.
    Column("preliminary_at", DateTime(timezone=True)),
    # Who sent it early, when a person did rather than the rules: such a preliminary
    # stands for as long as the result only waits for QC, whichever wait it is.
    Column("preliminary_by", Text),
    # When a technician asked for a re-run: the engine no longer releases it, and the
    # re-run result of its specimen and test replaces it.
    Column("rerun_requested_at", DateTime(timezone=True)),
)
Index("ix_open_holds_test", open_holds.c.instrument, open_holds.c.test_code)

# What people wrote about a result: shown with it, and sent with it to the LIS (NTE)
# when it is released after.
result_comments = Table(
    "result_comments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("text", Text, nullable=False),
    Column("written_by", Text, nullable=False),
    Column("written_at", DateTime(timezone=True), nullable=False),
)
Index("ix_result_comments_result", result_comments.c.result_id)
Index("ix_result_comments_written", result_comments.c.written_at)

# Reagent lots recalled by a person (R4), besides those the rule files mark: a result
# made with one is held. By reagent and lot as the analysers report them.
recalled_lots = Table(
    "recalled_lots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("reagent", Text, nullable=False),
    Column("lot", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("recalled_by", Text, nullable=False),
    Column("recalled_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("reagent", "lot", name="uq_recalled_lots"),
)
Index("ix_recalled_lots_recalled", recalled_lots.c.recalled_at)

# QC evaluations of control results, with the Westgard outcome.
qc_evaluations = Table(
    "qc_evaluations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("control_result_id", Integer, ForeignKey("control_results.id"), nullable=False),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False),
    Column("run", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("z", Numeric),
    Column("target_mean", Numeric),
    Column("target_sd", Numeric),
    Column("provisional", Boolean, nullable=False, default=True),
    Column("status", Text, nullable=False),
    Column("violations", Text, nullable=False, default=""),
    Column("warnings", Text, nullable=False, default=""),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_qc_evaluations_test", qc_evaluations.c.instrument, qc_evaluations.c.test_code)

# A QC failure opens one; a person closes it with what was done and the QC re-run.
corrective_actions = Table(
    "corrective_actions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    Column("closed_by", Text),
    Column("action_taken", Text),
    Column("closing_evaluation_id", Integer, ForeignKey("qc_evaluations.id")),
)

# Results already released when a later QC failed: listed for review.
qc_reviews = Table(
    "qc_reviews",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("corrective_action_id", Integer, ForeignKey("corrective_actions.id"), nullable=False),
    Column("result_id", Integer, ForeignKey("results.id"), nullable=False),
    Column("listed_at", DateTime(timezone=True), nullable=False),
    Column("reviewed_at", DateTime(timezone=True)),
    Column("reviewed_by", Text),
)

# Q3: the lab's own mean and SD for a control lot, once a biologist approved them.
control_limits = Table(
    "control_limits",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False),
    Column("lot", Text, nullable=False),
    Column("mean", Numeric, nullable=False),
    Column("sd", Numeric, nullable=False),
    Column("results", Integer, nullable=False),
    Column("approved_by", Text, nullable=False),
    Column("approved_at", DateTime(timezone=True), nullable=False),
)
Index(
    "ix_control_limits_lot",
    control_limits.c.instrument,
    control_limits.c.test_code,
    control_limits.c.lot,
)

# Events after which a test's earlier QC no longer counts (calibration, maintenance).
qc_events = Table(
    "qc_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("test_code", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("recorded_by", Text, nullable=False),
)
Index("ix_qc_events_test", qc_events.c.instrument, qc_events.c.test_code)

# What the engine remembers of the QC of each test on each instrument (engine/qc.py's
# TestQc), changed in the transaction that stores the result that changes it.
qc_tests = Table(
    "qc_tests",
    metadata,
    Column("instrument", Text, primary_key=True),
    Column("test_code", Text, primary_key=True),
    Column("run_number", Integer, nullable=False),
    Column("run_closed", Boolean, nullable=False),
    Column("levels", Text, nullable=False),  # JSON: the latest evaluation of each level
    Column("void_reason", Text, nullable=False),
    Column("void_at", DateTime(timezone=True)),
    Column("corrective_action_since", DateTime(timezone=True)),
    Column("corrective_action_reason", Text, nullable=False),
    Column("corrective_action_run", Text, nullable=False),
    Column("last_in_control_at", DateTime(timezone=True)),
    Column("accepted_run_at", DateTime(timezone=True)),
    Column("locked", Text, nullable=False),
    Column("lots_in_use", Text),  # JSON list, or NULL before the first lot reported
    Column("westgard", Text, nullable=False),  # JSON: closed runs' window and the open run
    Column("basis", Text, nullable=False),  # digest of the rule set and targets judged with
    Column("epoch", Integer, nullable=False),  # the windows' generation, for qc_lots.epoch
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# ... and of each control lot on an instrument and test (engine/qc.py's LotQc). Sums are
# exact fractions written as text ("n/d"), approved limits decimals as text: SQLite would
# keep a NUMERIC as a binary float, and a z on a limit must stay exactly on it.
qc_lots = Table(
    "qc_lots",
    metadata,
    Column("instrument", Text, primary_key=True),
    Column("test_code", Text, primary_key=True),
    Column("lot", Text, primary_key=True),
    Column("material", Text, nullable=False),
    Column("window", Text, nullable=False),  # JSON: Westgard bands and z-scores
    Column("results", Integer, nullable=False),
    Column("total", Text, nullable=False),
    Column("squares", Text, nullable=False),
    Column("runs", Text, nullable=False),  # JSON: distinct runs, up to 20
    Column("cycle_results", Integer, nullable=False),
    Column("cycle_total", Text, nullable=False),
    Column("cycle_squares", Text, nullable=False),
    Column("over_limit_cycles", Integer, nullable=False),
    Column("approved_mean", Text),
    Column("approved_sd", Text),
    Column("epoch", Integer, nullable=False),  # the qc_tests.epoch its window belongs to
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Conversions a migration leaves for the daemon, which has the rules (the QC state of a
# database that held results before it was kept as rows).
pending_conversions = Table(
    "pending_conversions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False),
)

# The rules in force, a row each time a daemon put other rules in force (at start, on a
# reload): every daemon sharing the database applies the latest (store/rules_in_force.py).
rules_in_force = Table(
    "rules_in_force",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("digest", Text, nullable=False),  # sha256 of the rules as JSON
    Column("rules", Text, nullable=False),  # the validated rules, as JSON
    Column("put_by", Text, nullable=False),
    Column("node", Text, nullable=False),
    Column("put_at", DateTime(timezone=True), nullable=False),
)

# Messages to the LIS (store/outbox.py), written in the transaction of the decisions that
# release their results, and closed by the LIS's answer. state: pending, delivered (AA),
# stopped (AE/AR: the specimen's queue waits for a person), dead (set aside).
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("specimen_id", Text, nullable=False),
    Column("instrument", Text, nullable=False),
    Column("message_type", Text, nullable=False),
    Column("control_id", Text, nullable=False),  # MSH-10: the same on every resend
    Column("message", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_sent_at", DateTime(timezone=True)),
    Column("answered_at", DateTime(timezone=True)),
    Column("answer", Text),  # the LIS's answer as received
    Column("detail", Text, nullable=False),  # why it stopped, in words
    Column("claimed_by", Text),  # the daemon sending it, while claimed_until is ahead
    Column("claimed_until", DateTime(timezone=True)),
    UniqueConstraint("control_id", name="uq_outbox_control_id"),
)
Index("ix_outbox_state", outbox.c.state, outbox.c.id)
Index("ix_outbox_specimen", outbox.c.specimen_id, outbox.c.id)

# Every send, resend and answer of an outbox entry, with its time (D3, D4).
outbox_log = Table(
    "outbox_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("outbox_id", Integer, ForeignKey("outbox.id"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", Text, nullable=False),  # sent, answered, timeout, disconnected, ...
    Column("data", Text, nullable=False),  # what went out or came back
    Column("detail", Text, nullable=False),
)
Index("ix_outbox_log_entry", outbox_log.c.outbox_id)

# Which daemon serves each instrument, when several share one database (store/leases.py).
instrument_leases = Table(
    "instrument_leases",
    metadata,
    Column("instrument", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("renewed_at", DateTime(timezone=True), nullable=False),
)

# Each closed month written to archives (middleware/archive.py): where its two copies
# went, the hash of its signed manifest, and when the copies were last checked.
archives = Table(
    "archives",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("period", Text, nullable=False),  # YYYY-MM, a calendar month in UTC
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("destinations", Text, nullable=False),  # JSON list of directories
    Column("manifest_sha256", Text, nullable=False),
    Column("key_id", Text, nullable=False),  # which key signed the manifest
    Column("row_count", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("verified_at", DateTime(timezone=True)),
    UniqueConstraint("period", name="uq_archives_period"),
)

# The people who use the status page and the control API (web/auth.py): a role each
# (web/roles.py), an argon2 hash of the password. Sessions issued before
# ``sessions_revoked_at`` (a logout) or ``password_changed_at`` no longer count.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("password_changed_at", DateTime(timezone=True), nullable=False),
    Column("sessions_revoked_at", DateTime(timezone=True)),
    UniqueConstraint("name", name="uq_users_name"),
)

# Machines that call the control API, each with a token of its own: only the token's
# SHA-256 is kept (a random token of 256 bits needs no slow hash).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_sha256", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
    UniqueConstraint("name", name="uq_api_tokens_name"),
    UniqueConstraint("token_sha256", name="uq_api_tokens_sha256"),
)

# A row here exists only inside a purge's transaction: while it does, the append-only
# tables' triggers let that transaction delete (store/retention.py).
purge_permit = Table(
    "purge_permit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("granted_at", DateTime(timezone=True), nullable=False),
)

# The times that place a row in an archive's month, and the references a purge's deletes
# are checked against (migration 0015).
Index("ix_raw_transmissions_received", raw_transmissions.c.received_at)
Index("ix_messages_received", messages.c.received_at)
Index("ix_quarantine_received", quarantine.c.received_at)
Index("ix_results_stored", results.c.stored_at)
Index("ix_control_results_stored", control_results.c.stored_at)
Index("ix_decisions_decided", decisions.c.decided_at)
Index("ix_qc_evaluations_evaluated", qc_evaluations.c.evaluated_at)
Index("ix_corrective_actions_closed", corrective_actions.c.closed_at)
Index("ix_qc_reviews_reviewed", qc_reviews.c.reviewed_at)
Index("ix_outbox_answered", outbox.c.answered_at)
Index("ix_outbox_log_at", outbox_log.c.at)
Index("ix_audit_log_at", audit_log.c.at)
Index("ix_results_message", results.c.message_id)
Index("ix_control_results_message", control_results.c.message_id)
Index("ix_specimens_first_message", specimens.c.first_message_id)
Index("ix_quarantine_raw", quarantine.c.raw_id)
Index("ix_quarantine_message", quarantine.c.message_id)
Index("ix_qc_evaluations_control_result", qc_evaluations.c.control_result_id)
Index("ix_reagent_uses_control_result", reagent_uses.c.control_result_id)
Index("ix_qc_reviews_result", qc_reviews.c.result_id)
Index("ix_qc_reviews_corrective_action", qc_reviews.c.corrective_action_id)
Index("ix_corrective_actions_closing", corrective_actions.c.closing_evaluation_id)
