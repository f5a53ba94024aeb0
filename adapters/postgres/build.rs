//! Rebuilds this crate when a migration is added or changed: `embed_migrations!` reads the
//! directory at compile time, but cargo only knows to look again if it is told. (A directory
//! given to `rerun-if-changed` is scanned recursively for changed modification times.)

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
