//! `cargo xtask <command>`: every developer and CI chore of the workspace in one place (the
//! rust-analyzer pattern), so CI and a developer run exactly the same steps.
//!
//! std only: xtask must compile in seconds on a fresh machine, before anything else is built.
//! To add a command: write one `fn name(args: &[String]) -> Result<(), String>`, add an arm to the
//! `match` in `main`, and a line to `COMMANDS` (which `--help` prints).

mod bench;
mod bench_coordinator;
mod bench_sts;
mod cluster;

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The commands `--help` lists, in the order a developer reaches for them.
const COMMANDS: &[(&str, &str)] = &[
    (
        "test [PYTEST_ARGS...]",
        "cargo test --workspace, build `caracal`, then the end-to-end suite driven by the official \
         Python SDK (extra arguments go to pytest, e.g. `-k restart -x`)",
    ),
    (
        "bench [api|sts|coordinator|governed]",
        "release build; STS micro-benchmarks (policy decision, ES256, in-process mint), then \
         list-applications p50/p95, STS mint latency and throughput, and Coordinator Session \
         cycles and Delegation create, and governed requests (mint + Gateway hop) at 1, 4 and 16 \
         workers, over HTTP on Postgres against baselines from the same run (needs Postgres and \
         Redis on 127.0.0.1); naming parts runs only those",
    ),
    (
        "up [--release]",
        "build `caracal` and start the API, STS, Coordinator and Gateway as separate \
         `caracal serve <svc>` processes on Postgres + Redis (DATABASE_URL, default \
         postgres://postgres@127.0.0.1:5432/caracal_local, created if missing; REDIS_URL, default \
         redis://127.0.0.1:6379); keys generated once and kept in the state directory \
         (CARACAL_CLUSTER_DIR, default <target>/caracal-cluster) with the logs and pid \
         files; ports from API_PORT, STS_PORT, COORDINATOR_PORT, GATEWAY_PORT; prints the URLs, \
         the admin token and `export CARACAL_*` lines",
    ),
    (
        "down",
        "stop the services `up` started (SIGTERM, SIGKILL after 10 s); nothing running is fine",
    ),
    (
        "ci [PYTEST_ARGS...]",
        "cargo fmt --check, clippy -D warnings, then everything `test` runs",
    ),
];

/// The official SDK release the server must stay wire-compatible with. The venv marker records
/// this exact list, so changing a pin reinstalls and an unchanged list never touches the network.
const SDK_PINS: &[&str] = &[
    "caracalai-admin==1.0.0",
    "caracalai-sdk==1.0.0",
    "caracalai-oauth==1.0.0",
    "caracalai-identity==1.0.0",
    "caracalai-verify==1.0.0",
    "pytest",
];

/// Where the end-to-end suite lives, relative to the workspace root.
const SDK_SUITE: &str = "services/caracal/tests/sdk";

/// pytest's exit status for "collected no tests": a suite that ran nothing has not passed.
const PYTEST_NO_TESTS: i32 = 5;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print_help();
        return ExitCode::FAILURE;
    };
    let started = Instant::now();
    let result = match command.as_str() {
        "-h" | "--help" | "help" => {
            print_help();
            Ok(())
        }
        "test" => test(rest),
        "ci" => ci(rest),
        "bench" => {
            Workspace::locate().and_then(|ws| bench::run(&|| ws.cargo(), &ws.target_dir, rest))
        }
        "up" => {
            Workspace::locate().and_then(|ws| cluster::up(&|| ws.cargo(), &ws.target_dir, rest))
        }
        "down" => Workspace::locate().and_then(|ws| cluster::down(&ws.target_dir, rest)),
        other => Err(format!(
            "unknown command `{other}`; `cargo xtask --help` lists the commands"
        )),
    };
    match result {
        Ok(()) => {
            if command != "help" && !command.starts_with('-') {
                println!("\nxtask {command}: ok ({:.0?})", started.elapsed());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("\nxtask {command}: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!("usage: cargo xtask <command> [args]\n\ncommands:");
    for (usage, about) in COMMANDS {
        println!("  {usage}\n      {about}");
    }
    println!(
        "\nenvironment: CARGO_TARGET_DIR (build output, SDK venv at $CARGO_TARGET_DIR/sdk-venv), \
         PYTHON (interpreter for the venv, default python3), CI (set: an unreachable Postgres fails \
         the suite instead of skipping the postgres mode)"
    );
}

/// `cargo xtask test`: unit, contract and service tests, then the SDK end-to-end suite.
fn test(pytest_args: &[String]) -> Result<(), String> {
    let ws = Workspace::locate()?;
    // The child processes inherit this process's environment, CI included: the SDK suite reads
    // it to decide whether an unreachable Postgres is a failure or a skip.
    section("cargo test --workspace");
    run(ws.cargo().args(["test", "--workspace"]))?;

    section("build the caracal binary");
    run(ws.cargo().args(["build", "--package", "caracal"]))?;
    let binary = ws.caracal_binary();
    if !binary.is_file() {
        return Err(format!(
            "{} was not produced by the build",
            binary.display()
        ));
    }

    section("SDK venv");
    let python = ws.sdk_venv()?;

    section("end-to-end suite (official Python SDK)");
    let status = command_status(
        Command::new(&python)
            .args(["-m", "pytest", SDK_SUITE])
            .args(pytest_args)
            .current_dir(&ws.root)
            .env("CARACAL_BIN", &binary)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )?;
    match status.code() {
        Some(0) => Ok(()),
        Some(PYTEST_NO_TESTS) => Err("pytest collected no tests".to_owned()),
        Some(code) => Err(format!("pytest failed (exit status {code})")),
        None => Err("pytest was killed by a signal".to_owned()),
    }
}

/// `cargo xtask ci`: what CI gates a change on; formatting and lints first because they fail fast.
fn ci(pytest_args: &[String]) -> Result<(), String> {
    let ws = Workspace::locate()?;
    section("cargo fmt --check");
    run(ws.cargo().args(["fmt", "--all", "--", "--check"]))?;

    section("cargo clippy -D warnings");
    run(ws.cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    test(pytest_args)
}

/// The paths every command works from, resolved once.
struct Workspace {
    root: PathBuf,
    target_dir: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Self, String> {
        // `cargo run` (the `cargo xtask` alias) names the checkout it runs from; the path
        // compiled in is only a fallback. Cargo reuses an xtask binary built from another
        // checkout sharing the target directory (a CI clone, say), whose compiled-in path
        // would otherwise make every command work on that checkout.
        let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let root = manifest_dir
            .parent()
            .ok_or("xtask is not inside a workspace")?
            .to_path_buf();
        // Cargo resolves a relative CARGO_TARGET_DIR against the directory it was started from;
        // children run from the root, so pin it to an absolute path they all agree on.
        let target_dir = match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    env::current_dir()
                        .map_err(|e| format!("cannot read the current directory: {e}"))?
                        .join(dir)
                }
            }
            None => root.join("target"),
        };
        Ok(Self { root, target_dir })
    }

    /// A cargo invocation from the workspace root, with the same toolchain that runs xtask.
    fn cargo(&self) -> Command {
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(&self.root)
            .env("CARGO_TARGET_DIR", &self.target_dir);
        command
    }

    fn caracal_binary(&self) -> PathBuf {
        self.target_dir
            .join("debug")
            .join(format!("caracal{}", env::consts::EXE_SUFFIX))
    }

    /// Creates or reuses the venv holding the pinned SDK and pytest; returns its interpreter.
    fn sdk_venv(&self) -> Result<PathBuf, String> {
        let venv = self.target_dir.join("sdk-venv");
        let python = venv.join("bin").join("python");
        let marker = venv.join(".caracal-sdk-pins");
        let wanted = SDK_PINS.join("\n") + "\n";

        let usable = python.is_file()
            && Command::new(&python)
                .args(["-c", "import sys"])
                .status()
                .is_ok_and(|s| s.success());
        if !usable {
            if venv.exists() {
                println!("removing unusable venv {}", venv.display());
                fs::remove_dir_all(&venv)
                    .map_err(|e| format!("cannot remove {}: {e}", venv.display()))?;
            }
            let interpreter = env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
            run(Command::new(interpreter).args([
                OsStr::new("-m"),
                OsStr::new("venv"),
                venv.as_os_str(),
            ]))?;
        }

        if fs::read_to_string(&marker).is_ok_and(|have| have == wanted) {
            println!(
                "{} already holds the pinned SDK; skipping pip",
                venv.display()
            );
            return Ok(python);
        }
        // The marker goes first so a failed install cannot leave a stale "installed" claim.
        let _ = fs::remove_file(&marker);
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--ignore-requires-python"])
            .args(SDK_PINS))?;
        fs::write(&marker, wanted)
            .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        Ok(python)
    }
}

fn section(title: &str) {
    println!("\n==================== xtask: {title} ====================");
}

/// Runs a command to completion, echoing it first; a non-zero exit is an error naming it.
fn run(command: &mut Command) -> Result<(), String> {
    let status = command_status(command)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", describe(command)))
    }
}

fn command_status(command: &mut Command) -> Result<std::process::ExitStatus, String> {
    println!("$ {}", describe(command));
    // Our own output must land before the child's, or CI logs interleave confusingly.
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let status = command
        .status()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(command)))?;
    println!("({:.1?})", started.elapsed());
    Ok(status)
}

fn describe(command: &Command) -> String {
    let program = Path::new(command.get_program())
        .file_name()
        .unwrap_or(command.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
