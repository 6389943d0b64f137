-- Every statement the store runs, each written once, read by `worker.store.manager`.
--
-- A statement starts at a line `-- name: <name>`; a name ending in `.sqlite` or
-- `.postgres` is that backend's own version of the statement without it (used only
-- where the two SQL dialects cannot say the same thing). Parameters are `:name`;
-- the connectors turn them into their own style. A list is compared with
-- `= ANY(:name)`, which SQLite reads through json_each. Row locks (`FOR UPDATE`,
-- `FOR SHARE`, `SKIP LOCKED`) are PostgreSQL's; SQLite's connector drops them, since
-- its writes already hold the whole database (BEGIN IMMEDIATE).
-- Every ordered listing ends on a unique key, so equal times come back in one
-- order on both backends (tests/contract pins them).

-- name: ping
SELECT 1
-- name: case_insert
INSERT INTO cases (id, playbook, subject, status, priority, steps, trigger, created_at,
                   updated_at, run_after, idempotency_key)
VALUES (:id, :playbook, :subject, 'pending', :priority, :steps, :trigger, :now, :now,
        :run_after, :idempotency_key)
ON CONFLICT DO NOTHING
-- name: steps_insert
INSERT INTO steps (case_id, idx, step_id, action, status)
VALUES (:case_id, :idx, :step_id, :action, 'pending')
-- name: case_get
SELECT * FROM cases WHERE id = :case_id
-- name: case_by_key
SELECT * FROM cases WHERE idempotency_key = :key
-- name: cases_by_ids
SELECT * FROM cases WHERE id = ANY(:ids)
-- name: cases_list
SELECT * FROM cases WHERE status = ANY(:statuses) OR :every ORDER BY created_at, id
-- name: open_cases_of
-- `status || ''`: by person (index cases_subject), never a scan of every pending case
SELECT * FROM cases WHERE subject = ANY(:people) AND status || '' = ANY(:open)
ORDER BY created_at, id
-- name: open_case_find
-- the person's one active case (pending to halted) first, else their newest contained one
SELECT * FROM cases WHERE subject = :subject AND status = ANY(:open)
ORDER BY CASE status WHEN 'contained' THEN 1 ELSE 0 END, created_at DESC, id DESC LIMIT 1
-- name: case_lock
-- also first in a release as waiting and in a confirmation: whichever comes second
-- reads what the first committed
SELECT * FROM cases WHERE id = :case_id FOR UPDATE
-- name: case_escalate
-- an incident's steps added: runnable at once (a contained or waiting case too, when it
-- gained steps), at the higher priority
-- (a running case's worker does not know of them: `rerun` makes its release pending)
UPDATE cases SET steps = :steps, priority = :priority, updated_at = :now,
                 status = CASE WHEN :added AND status IN ('contained', 'waiting')
                          THEN 'pending' ELSE status END,
                 run_after = CASE WHEN status = 'running' THEN run_after ELSE NULL END,
                 rerun = CASE WHEN :added AND status = 'running' THEN TRUE ELSE rerun END
WHERE id = :case_id RETURNING *
-- name: claim_next
-- pending and due, or running with a lapsed lease; the most urgent first
UPDATE cases SET status = 'running', lease_owner = :worker_id, lease_expires_at = :expires,
                 updated_at = :now
WHERE id = (SELECT id FROM cases
            WHERE ((status = 'pending' AND (run_after IS NULL OR run_after <= :now))
                   OR (status = 'running' AND lease_expires_at <= :now))
            AND priority >= :min_priority
            ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING *
-- name: claim_case
-- no SKIP LOCKED: it names its case, so it waits for that row's writer, then re-checks
UPDATE cases SET status = 'running', lease_owner = :worker_id, lease_expires_at = :expires,
                 updated_at = :now
WHERE id = :case_id AND ((status = 'pending' AND (run_after IS NULL OR run_after <= :now))
                         OR (status = 'running' AND lease_expires_at <= :now))
RETURNING *
-- name: heartbeat
UPDATE cases SET lease_expires_at = :expires
WHERE id = :case_id AND lease_owner = :worker_id AND status = 'running'
-- name: release
-- a case escalated while it ran (`rerun`) has steps its worker did not know of: not
-- contained or waiting on a person, but pending, so that they run at once; nor waiting
-- when a waiting step's task was confirmed while it ran (the confirmation found no
-- waiting case to resume; case_lock makes the two see each other's commits)
UPDATE cases SET status = CASE WHEN rerun AND :status IN ('contained', 'waiting')
                 THEN 'pending'
                 WHEN :status = 'waiting' AND EXISTS (
                     SELECT 1 FROM operator_tasks t JOIN steps s
                     ON s.case_id = t.case_id AND s.step_id = t.step_id
                     WHERE t.case_id = :case_id AND t.confirmed_at IS NOT NULL
                     AND s.status = 'waiting')
                 THEN 'pending' ELSE :status END,
                 rerun = FALSE, run_after = :run_after, halt_reason = :halt_reason,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :case_id AND lease_owner = :worker_id RETURNING status
-- name: case_started
SELECT status, EXISTS (SELECT 1 FROM steps WHERE case_id = :case_id AND attempts > 0)
       AS started
FROM cases WHERE id = :case_id FOR UPDATE
-- name: case_reschedule
UPDATE cases SET run_after = :run_after, updated_at = :now WHERE id = :case_id RETURNING *
-- name: case_cancel
UPDATE cases SET status = 'cancelled', halt_reason = :reason, updated_at = :now
WHERE id = :case_id RETURNING *
-- name: case_resume
UPDATE cases SET status = 'pending', run_after = NULL, halt_reason = NULL, updated_at = :now
WHERE id = :case_id AND status IN ('waiting', 'halted') RETURNING *
-- name: case_move
UPDATE cases SET status = :to, updated_at = :now WHERE id = :case_id AND status = :from
-- name: case_owner
SELECT lease_owner FROM cases WHERE id = :case_id
-- name: steps_of
SELECT * FROM steps WHERE case_id = :case_id ORDER BY idx
-- name: step_start
-- a step write happens only while the writer holds the case's lease; the shared row
-- lock keeps a claim from slipping in before the write commits
UPDATE steps SET status = 'running', attempts = attempts + 1,
                 started_at = COALESCE(started_at, :now)
WHERE case_id = :case_id AND idx = :idx
AND EXISTS (SELECT 1 FROM cases WHERE id = :case_id AND lease_owner = :worker_id FOR SHARE)
RETURNING *
-- name: step_finish
UPDATE steps SET status = :status, finished_at = :finished, evidence = :evidence,
                 error = :error
WHERE case_id = :case_id AND idx = :idx
AND EXISTS (SELECT 1 FROM cases WHERE id = :case_id AND lease_owner = :worker_id FOR SHARE)
RETURNING *
-- name: ledger_get
SELECT * FROM side_effects WHERE key = :key
-- name: ledger_intent
-- an update that changes nothing: the entry already there comes back as it is
INSERT INTO side_effects (key, case_id, step_id, operation, state, requested_at)
VALUES (:key, :case_id, :step_id, :operation, 'intent', :now)
ON CONFLICT (key) DO UPDATE SET key = excluded.key RETURNING *
-- name: ledger_applied
UPDATE side_effects SET state = 'applied', applied_at = COALESCE(applied_at, :now)
WHERE key = :key RETURNING *
-- name: ledger_settle
-- only an entry still in intent: a step that marked it meanwhile knew better
UPDATE side_effects SET state = :state,
       applied_at = CASE WHEN :state = 'applied' THEN COALESCE(applied_at, :now) END
WHERE key = :key AND state = 'intent' RETURNING *
-- name: ledger_intents_of
SELECT * FROM side_effects WHERE case_id = :case_id AND state = 'intent'
ORDER BY requested_at, key
-- name: task_open
INSERT INTO operator_tasks (case_id, step_id, title, instructions, console_url, subject,
                            opened_at)
VALUES (:case_id, :step_id, :title, :instructions, :console_url, :subject, :opened_at)
ON CONFLICT (case_id, step_id) DO NOTHING
-- name: task_get
SELECT * FROM operator_tasks WHERE case_id = :case_id AND step_id = :step_id
-- name: task_confirm
-- the first confirmation only: a row comes back when this one is it
UPDATE operator_tasks SET confirmed_at = :now, confirmed_by = :by
WHERE case_id = :case_id AND step_id = :step_id AND confirmed_at IS NULL RETURNING *
-- name: case_resume_confirmed
-- a case waiting for operators runs again once a waiting step's task is confirmed (the
-- same test as `release` makes)
UPDATE cases SET status = 'pending', run_after = NULL, updated_at = :now
WHERE id = :case_id AND status = 'waiting' AND EXISTS (
    SELECT 1 FROM operator_tasks t JOIN steps s
    ON s.case_id = t.case_id AND s.step_id = t.step_id
    WHERE t.case_id = :case_id AND t.confirmed_at IS NOT NULL AND s.status = 'waiting')
RETURNING id
-- name: tasks_open
SELECT * FROM operator_tasks WHERE confirmed_at IS NULL ORDER BY opened_at, case_id, step_id
-- name: tasks_open_of
SELECT * FROM operator_tasks WHERE case_id = ANY(:ids) AND confirmed_at IS NULL
ORDER BY opened_at, case_id, step_id
-- name: task_backlog
SELECT COUNT(*) AS n, MIN(opened_at) AS oldest FROM operator_tasks WHERE confirmed_at IS NULL
-- name: timers_drop_older
DELETE FROM timers WHERE case_id = :case_id AND epoch < :epoch AND fired_at IS NULL
-- name: timer_upsert
INSERT INTO timers (case_id, name, epoch, due_at, closes_case)
VALUES (:case_id, :name, :epoch, :due_at, :closes_case)
ON CONFLICT (case_id, name, epoch) DO UPDATE SET due_at = excluded.due_at
WHERE timers.fired_at IS NULL
-- name: countdown_set
UPDATE cases SET countdown = :countdown, all_lapsed_at = :all_lapsed_at, updated_at = :now
WHERE id = :case_id
-- name: timer_claim
UPDATE timers SET fired_at = :now, fired_by = :worker_id
WHERE (case_id, name, epoch) = (
    SELECT case_id, name, epoch FROM timers WHERE fired_at IS NULL AND due_at <= :now
    ORDER BY due_at, case_id, name, epoch LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING *
-- name: timers_of
SELECT * FROM timers WHERE case_id = :case_id ORDER BY epoch, due_at, name
-- name: timer_next
SELECT MIN(due_at) AS due FROM timers WHERE fired_at IS NULL
-- name: case_next_due
-- the soonest a case not claimable now becomes so: a pending case's run_after, a
-- running case's lease lapsing (its worker may be dead)
SELECT MIN(due) AS due FROM (
    SELECT MIN(run_after) AS due FROM cases WHERE status = 'pending' AND run_after > :now
    UNION ALL
    SELECT MIN(lease_expires_at) AS due FROM cases
    WHERE status = 'running' AND lease_expires_at > :now
) AS soonest
-- name: delivery_insert
INSERT INTO deliveries (key, case_id, outcome, received_at)
VALUES (:key, :case_id, :outcome, :received_at) ON CONFLICT (key) DO NOTHING
-- name: delivery_get
SELECT * FROM deliveries WHERE key = :key
-- name: deliveries_of
SELECT * FROM deliveries WHERE key = ANY(:keys)
-- name: refusal_insert
INSERT INTO refusals (at, source, subject, reason) VALUES (:at, :source, :subject, :reason)
-- name: refusals
SELECT * FROM refusals ORDER BY id
-- name: events_of
SELECT * FROM events WHERE case_id = :case_id ORDER BY seq
-- name: evidence_head
SELECT events_head, events_count FROM cases WHERE id = :case_id
-- name: case_counts
SELECT status, playbook, COUNT(*) AS count FROM cases GROUP BY status, playbook
ORDER BY status, playbook
-- name: count_events
SELECT COUNT(*) AS n FROM events WHERE kind = :kind
-- name: running_countdowns
-- the index cases_all_lapsed covers it: no countdown document is read
SELECT COUNT(*) AS n FROM cases WHERE all_lapsed_at > :now AND NOT status = ANY(:closed)
-- name: cases_urgent
-- halted, then waiting, then the rest (Store.urgent_cases); the newest first; the page's ids are
-- sorted first, not whole cases; the index cases_urgency holds this order (keep them alike)
SELECT * FROM cases WHERE id IN (
    SELECT id FROM cases WHERE status = ANY(:statuses) OR :every
    ORDER BY CASE status WHEN 'halted' THEN 0 WHEN 'waiting' THEN 1 ELSE 2 END,
             created_at DESC, id
    LIMIT :limit OFFSET :offset)
ORDER BY CASE status WHEN 'halted' THEN 0 WHEN 'waiting' THEN 1 ELSE 2 END,
         created_at DESC, id
-- name: cases_count
SELECT COUNT(*) AS n FROM cases WHERE status = ANY(:statuses) OR :every
-- name: cases_first
SELECT * FROM cases WHERE status = ANY(:statuses) OR :every ORDER BY created_at, id
LIMIT :limit
-- name: cases_after
-- a row comparison: a range of the index cases_created (created_at, id)
SELECT * FROM cases WHERE (status = ANY(:statuses) OR :every)
AND (created_at, id) > (:created_at, :after) ORDER BY created_at, id LIMIT :limit
-- name: case_created_at
SELECT created_at FROM cases WHERE id = :case_id
-- name: budget_holders
SELECT holder, window_start, granted, priority, expires_at FROM rate_budget
WHERE bucket = :bucket
-- name: budget_save
INSERT INTO rate_budget (bucket, holder, window_start, granted, priority, expires_at)
VALUES (:bucket, :holder, :window_start, :granted, :priority, :expires_at)
ON CONFLICT (bucket, holder) DO UPDATE SET window_start = excluded.window_start,
    granted = excluded.granted, priority = excluded.priority, expires_at = excluded.expires_at
-- name: budget_prune
-- replicas gone for good: their lease lapsed and their window is over
DELETE FROM rate_budget WHERE bucket = :bucket AND expires_at < :now AND window_start < :start
