-- Reverts the subject issuers (development only; production migrations are forward-only).
DROP TABLE IF EXISTS subject_issuers;
