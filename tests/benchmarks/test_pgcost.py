"""benchmarks/pgcost.py at a toy size, on the machine's PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from benchmarks.pgcost import COMMITS_ROW, MESSAGE_ROW, POSTGRES_URL, statement_label
from tests.benchmarks.scripts import rows_of, run_script
from tests.conftest import require_service

pytestmark = [pytest.mark.slow]


def _pgcost_databases() -> list[str]:
    with psycopg.connect(f"{POSTGRES_URL}/postgres") as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cloudscale_pgcost_%'")
        return [name for (name,) in rows]


def test_it_times_each_statement_of_a_small_message_and_drops_its_database() -> None:
    require_service("PostgreSQL", POSTGRES_URL)
    before = _pgcost_databases()

    done = run_script("pgcost.py", "--events", "140", "--message-size", "7", timeout=180)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "per message of 7 events (20 messages" in done.stdout
    rows = rows_of(done.stdout)
    store = rows["INSERT:events_storedevent"]
    assert float(store[0]) == pytest.approx(1.0)  # one store INSERT a message
    assert float(store[1]) > 0 and float(store[2]) > 0, store
    whole_server = float(rows[MESSAGE_ROW][1])
    labels = [k for k in rows if (":" in k and not k.startswith("(")) or k == "savepoints"]
    statements = sum(float(rows[k][1]) for k in labels)
    # The message's server CPU holds every statement's and the commits' (the rest of it).
    assert whole_server == pytest.approx(statements + float(rows[COMMITS_ROW][1]), rel=0.01, abs=0.2)
    assert statements < whole_server
    assert _pgcost_databases() == before


@pytest.mark.parametrize(
    ("sql", "label"),
    [
        ('INSERT INTO "events_storedevent" ("tenant") VALUES (%s)', "INSERT:events_storedevent"),
        ("SELECT event_id FROM scoring_scoredevent WHERE tenant = %s", "SELECT:scoring_scoredevent"),
        ('UPDATE "scoring_cartcheck" SET "status" = %s', "UPDATE:scoring_cartcheck"),
        ('SAVEPOINT "s1_x1"', "savepoints"),
        ('RELEASE SAVEPOINT "s1_x1"', "savepoints"),
        ('ROLLBACK TO SAVEPOINT "s1_x1"', "savepoints"),
        ("SELECT pg_backend_pid()", "SELECT"),
    ],
)
def test_a_statement_is_labelled_by_its_verb_and_first_table(sql: str, label: str) -> None:
    assert statement_label(sql) == label
