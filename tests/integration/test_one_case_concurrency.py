"""Issue 14: 50 triggers for one person arriving at once, in mixed spellings, from
mixed front ends (webhooks through intake, the API and the CLI unkeyed) and mixed
playbooks, on two processes (replicas) sharing one store: exactly one case.

The in-process stripe locks serialise one process only; the store holds the rule for
all of them (a partial unique index on the active cases' subject, and the person's
advisory lock on PostgreSQL). Each backend is run with two stores on one database.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from worker.admission import Admissions, Instruction, Outcome
from worker.clock import ManualClock
from worker.intake import Intake
from worker.playbook import find_playbook, load_playbook
from worker.store.base import Store
from worker.store.postgres import PostgresStore
from worker.store.sqlite import SqliteStore

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
SPELLINGS = (
    "ann.lee@example.com",
    "ANN.LEE@EXAMPLE.COM",
    " Ann.Lee@Example.com ",
    "ann.lee@Example.COM\t",
)
TRIGGERS = 50


async def _opened(a: Store, b: Store) -> tuple[Store, Store]:
    await a.open()
    await b.open()
    return a, b


async def test_fifty_concurrent_triggers_make_one_case_on_sqlite(tmp_path: Path) -> None:
    stores = await _opened(SqliteStore(tmp_path / "o.db"), SqliteStore(tmp_path / "o.db"))
    try:
        await one_case_for_fifty_triggers(stores)
    finally:
        for store in stores:
            await store.close()


async def test_fifty_concurrent_triggers_make_one_case_on_postgres(pg_fresh_dsn: str) -> None:
    stores = await _opened(PostgresStore(pg_fresh_dsn), PostgresStore(pg_fresh_dsn))
    try:
        await one_case_for_fifty_triggers(stores)
    finally:
        for store in stores:
            await store.close()


async def one_case_for_fifty_triggers(replicas: tuple[Store, Store]) -> None:
    clock = ManualClock()
    books = [load_playbook(find_playbook(n, [PLAYBOOKS])) for n in ("leaver", "incident")]
    processes = [
        Admissions(store, clock.now, protected=[], intake=Intake(store, clock.now))
        for store in replicas
    ]
    shapes = itertools.product(SPELLINGS, books, (True, False), processes)
    instructions = []
    for n, (spelling, book, keyed, admissions) in zip(range(TRIGGERS), itertools.cycle(shapes)):
        instruction = Instruction(
            playbook=book,
            subject=spelling,
            trigger={"source": "webhook" if keyed else "api", "reference": str(n)},
            key=f"hook:{n}" if keyed else None,
        )
        instructions.append((admissions, instruction))

    answers = await asyncio.gather(*(a.admit(i) for a, i in instructions))

    cases = await replicas[0].list_cases()
    assert len(cases) == 1, [(c.id, c.playbook, c.status) for c in cases]
    (case,) = cases
    assert case.subject == "ann.lee@example.com"
    assert {a.case.id for a in answers if a.case is not None} == {case.id}
    outcomes = [a.outcome for a in answers]
    assert outcomes.count(Outcome.CREATED) == 1
    # an incident outranks the leaver, whichever came first: the case ends at its priority
    assert case.priority == books[1].priority
    assert [s.id for s in case.steps][-1] == "deny-role-sessions"
