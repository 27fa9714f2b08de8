//! The two Rust peers on the shared workload (README.md beside this crate):
//!
//!   peer-rust sglang|dynamo <prompt bytes> <replicas> <decisions> <samples file> [in flight]
//!
//! Each builds the fleet, routes the eight warm-up batches, then times
//! <decisions> decisions over the measured batch. Each request is finished
//! outside the timed span: at once, or with [in flight] > 0 when that many
//! later decisions have been made (the oldest open one first). Writes one
//! time in ns per line to the samples file and prints one JSON line.

mod dynamo;
mod prompts;
mod sglang;

use std::collections::VecDeque;
use std::io::Write;
use std::time::Instant;

/// One router under test: `route` is the timed decision and returns the
/// replica it chose; `settle` is what follows it off the routing path (not
/// timed); `finish` ends the oldest open request (not timed).
pub trait Peer {
    fn route(&mut self, prompt_index: usize) -> usize;
    fn settle(&mut self) {}
    fn finish(&mut self, replica: usize, prompt_index: usize);
}

fn die(what: &str) -> ! {
    eprintln!("peer-rust: {what}");
    std::process::exit(1);
}

/// Requests held open, finished oldest first once more than `limit` are.
struct Window {
    open: VecDeque<(usize, usize)>,
    limit: usize,
}

impl Window {
    fn hold(&mut self, peer: &mut dyn Peer, at: usize, k: usize) {
        self.open.push_back((at, k));
        if self.open.len() > self.limit {
            if let Some((a, j)) = self.open.pop_front() {
                peer.finish(a, j);
            }
        }
    }
}

fn run(peer: &mut dyn Peer, w: &mut Window, n: usize, replicas: usize) -> (Vec<u64>, usize) {
    let mut seen = vec![false; replicas];
    let mut distinct = 0;
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let k = prompts::BATCH * prompts::WARM_ROUNDS + i % prompts::BATCH;
        let t0 = Instant::now();
        let at = peer.route(k);
        let dt = t0.elapsed().as_nanos() as u64;
        t.push(dt);
        peer.settle();
        w.hold(peer, at, k);
        if !seen[at] {
            seen[at] = true;
            distinct += 1;
        }
    }
    (t, distinct)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 && args.len() != 7 {
        die("usage: peer-rust sglang|dynamo <prompt bytes> <replicas> <decisions> <samples file> [in flight]");
    }
    let limit: usize = args
        .get(6)
        .map_or(Some(0), |a| a.parse().ok())
        .unwrap_or(usize::MAX);
    if limit > 4096 {
        die("bad in-flight count");
    }
    let mut w = Window {
        open: VecDeque::new(),
        limit,
    };
    let size: usize = args[2].parse().unwrap_or(0);
    let replicas: usize = args[3].parse().unwrap_or(0);
    let n: usize = args[4].parse().unwrap_or(0);
    let Some(golden) = prompts::golden(size) else {
        die("bad prompt size")
    };
    if replicas == 0 || replicas > 999 || n == 0 {
        die("bad arguments");
    }
    let sum = prompts::checksum(size);
    if sum != golden {
        die("prompt checksum differs from the golden one");
    }
    // Every prompt of the case in routing order: warm batches, then measured.
    let mut all = Vec::with_capacity(prompts::BATCH * (prompts::WARM_ROUNDS + 1));
    for round in 0..prompts::WARM_ROUNDS {
        all.extend(prompts::batch(size, Some(round)));
    }
    all.extend(prompts::batch(size, None));
    let (name, mut peer): (&str, Box<dyn Peer>) = match args[1].as_str() {
        "sglang" => (
            "sglang_kv_index",
            Box::new(sglang::Sglang::new(replicas, all)),
        ),
        "dynamo" => (
            "dynamo_kv_router",
            Box::new(dynamo::Dynamo::new(replicas, all)),
        ),
        _ => die("peer must be sglang or dynamo"),
    };
    for k in 0..prompts::BATCH * prompts::WARM_ROUNDS {
        let at = peer.route(k);
        peer.settle();
        w.hold(peer.as_mut(), at, k);
    }
    let (mut t, distinct) = run(peer.as_mut(), &mut w, n, replicas);
    let mut f = std::fs::File::create(&args[5]).unwrap_or_else(|_| die("cannot write samples"));
    let text: String = t.iter().map(|x| format!("{x}\n")).collect();
    f.write_all(text.as_bytes())
        .unwrap_or_else(|_| die("cannot write samples"));
    t.sort_unstable();
    println!(
        "{{\"peer\":\"{name}\",\"prompt_bytes\":{size},\"replicas\":{replicas},\"in_flight\":{limit},\
         \"decisions\":{n},\
         \"prompts_fnv\":\"{sum:016x}\",\"replicas_chosen\":{distinct},\"failed\":0,\
         \"p50_ns\":{},\"p99_ns\":{}}}",
        t[n / 2],
        t[n * 99 / 100]
    );
}
