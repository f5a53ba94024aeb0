//! Postgres adapter (diesel-async): repositories, unit of work, outbox queue, migrations without libpq.
