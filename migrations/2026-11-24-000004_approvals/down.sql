-- Reverts the approval holds (development only; production migrations are forward-only).
DROP TABLE IF EXISTS step_up_challenges;
DROP FUNCTION IF EXISTS step_up_challenges_notify_decided();
