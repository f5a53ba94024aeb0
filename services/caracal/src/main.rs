//! `caracal`: the one binary. `caracal dev` runs every service built so far in one process on
//! the in-memory store; `caracal serve <svc>` runs on Postgres + Redis; `caracal migrate`
//! applies the schema.

#![forbid(unsafe_code)]

mod audit_cli;
mod demo;
mod wiring;

use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: per-thread free lists suit a server whose requests
/// allocate and free many small buffers on several runtimes' threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
caracal: the authority layer for AI agents

USAGE:
    caracal dev              all services in one process, in-memory store (state lost on exit)
    caracal dev --demo       the same, plus a ready-to-call demo: seeds a zone \"demo\" (application,
                             bearer-token provider, resource://demo-echo, active grant policy),
                             starts a local echo upstream, and prints the CARACAL_* variables, a
                             Python SDK snippet and curl lines that reach it through the Gateway
    caracal serve api        the API service on Postgres + Redis (DATABASE_URL, REDIS_URL)
    caracal serve sts        the STS on Postgres + Redis
    caracal serve coordinator
                             the Coordinator on Postgres + Redis (STS_URL: where the STS is)
    caracal serve gateway    the Gateway on Postgres + Redis (STS_URL, GATEWAY_STS_HMAC_KEY)
    caracal serve audit      the Audit service on Postgres + Redis (AUDIT_HMAC_KEY)
    caracal serve all        every service in one process on Postgres + Redis
    caracal migrate          apply database migrations to DATABASE_URL and exit
    caracal audit verify [--zone Z]…
                             recompute the audit hash chain of every zone (or the given ones)
                             in DATABASE_URL; checks chain HMACs when AUDIT_HMAC_KEY is set;
                             names the first broken link and exits 1 if there is one
    caracal help             this text

Configuration is read from environment variables; see the README's configuration table.";

fn init_tracing(dev: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if dev {
        builder.compact().init();
    } else {
        builder.json().init();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("caracal: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match words.as_slice() {
        ["dev"] => {
            init_tracing(true);
            runtime.block_on(wiring::dev(false))
        }
        ["dev", "--demo"] => {
            init_tracing(true);
            runtime.block_on(wiring::dev(true))
        }
        _ if words.contains(&"--demo") => Err(
            "`--demo` only works as `caracal dev --demo`: it seeds the throwaway in-memory sandbox, never a Postgres deployment"
                .to_string(),
        ),
        ["serve", which @ ("api" | "sts" | "coordinator" | "gateway" | "audit" | "all")] => {
            init_tracing(false);
            let services = match *which {
                "api" => wiring::Services::Api,
                "sts" => wiring::Services::Sts,
                "coordinator" => wiring::Services::Coordinator,
                "gateway" => wiring::Services::Gateway,
                "audit" => wiring::Services::Audit,
                _ => wiring::Services::All,
            };
            runtime.block_on(wiring::serve(services))
        }
        ["serve", other] => Err(format!(
            "unknown service {other:?}: this build serves `api`, `sts`, `coordinator`, `gateway`, `audit` or `all`"
        )),
        ["audit", "verify", rest @ ..] => {
            init_tracing(false);
            runtime.block_on(audit_cli::run(rest))
        }
        ["migrate"] => {
            init_tracing(false);
            runtime.block_on(wiring::migrate())
        }
        ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unrecognised arguments {args:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("caracal: {message}");
            ExitCode::FAILURE
        }
    }
}
