//! ring/argon2 implementations of the crypto ports: envelope sealer, Argon2id, HMAC, secrets.
