//! `halley-load`: steady HTTP load from outside a cluster, for the Docker scenarios
//! (`scripts/cluster/`). Sends `GET /` to every address with 2 keep-alive clients and 1
//! fresh-connection client each, one request per 10 ms per client, until the file named by
//! `--until` exists; then prints `ok=N failed=N conn_errors=N` and the first problems.
//!
//! Usage: halley-load --until FILE ADDR...

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use halley_tests::load::Load;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut until: Option<PathBuf> = None;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--until" {
            until = args.next().map(PathBuf::from);
        } else {
            match arg.parse() {
                Ok(addr) => addrs.push(addr),
                Err(_) => {
                    eprintln!("halley-load: {arg:?} is not an address (IP:PORT)");
                    std::process::exit(2);
                }
            }
        }
    }
    let Some(until) = until.filter(|_| !addrs.is_empty()) else {
        eprintln!("usage: halley-load --until FILE ADDR...");
        std::process::exit(2);
    };
    let rt = halley_tests::bench::runtime();
    let loads: Vec<Load> = addrs
        .iter()
        .map(|&a| rt.block_on(async move { Load::start(a, 2, 1, "/", Duration::from_millis(10)) }))
        .collect();
    while !until.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut ok, mut failed, mut errors) = (0, 0, 0);
    let mut problems = Vec::new();
    for load in loads {
        let stats = rt.block_on(load.stop());
        let (o, f, e) = stats.totals();
        ok += o;
        failed += f;
        errors += e;
        if f + e > 0 {
            problems.push(stats.summary());
        }
    }
    println!("ok={ok} failed={failed} conn_errors={errors}");
    for p in problems {
        println!("{p}");
    }
}
