//! SGLang's cache-aware selection (HTTP mode: the character radix tree of
//! the `kv-index` crate), with the router's default thresholds:
//!
//! - the fleet is imbalanced when (max load - min load) > 64 and
//!   max load > 1.5 x min load; then the least-loaded replica takes the
//!   request (ties: the lowest index) and the prompt is inserted for it;
//! - otherwise the prompt is matched against the tree in the same descent
//!   that inserts it: when matched characters / prompt characters > 0.3,
//!   the least-loaded of the replicas holding the deepest matched node
//!   takes it (ties: the tree's order); below the threshold, the
//!   least-loaded replica of the fleet (ties: the lowest index).
//!
//! A replica's load is the router's own count of its requests in flight,
//! starting at the fleet's running + waiting.

use std::collections::HashMap;

use kv_index::Tree;

use crate::prompts;
use crate::Peer;

const CACHE_THRESHOLD: f64 = 0.3;
const BALANCE_ABS_THRESHOLD: usize = 64;
const BALANCE_REL_THRESHOLD: f64 = 1.5;

pub struct Sglang {
    tree: Tree,
    names: Vec<String>,
    index: HashMap<String, usize>,
    load: Vec<usize>,
    prompts: Vec<String>,
}

impl Sglang {
    pub fn new(replicas: usize, prompts: Vec<String>) -> Self {
        let names: Vec<String> = (0..replicas).map(|i| format!("replica-{i:03}")).collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        let load = (0..replicas)
            .map(|i| prompts::running(i) + prompts::waiting(i))
            .collect();
        Sglang {
            tree: Tree::new(),
            names,
            index,
            load,
            prompts,
        }
    }
}

fn least_loaded(load: &[usize]) -> usize {
    let mut best = 0;
    for (i, &l) in load.iter().enumerate() {
        if l < load[best] {
            best = i;
        }
    }
    best
}

impl Peer for Sglang {
    fn route(&mut self, k: usize) -> usize {
        let text = self.prompts[k].as_str();
        let max = *self.load.iter().max().unwrap_or(&0);
        let min = *self.load.iter().min().unwrap_or(&0);
        let imbalanced =
            max - min > BALANCE_ABS_THRESHOLD && max as f64 > BALANCE_REL_THRESHOLD * min as f64;
        let chosen = if imbalanced {
            let at = least_loaded(&self.load);
            self.tree.match_and_insert(text, &self.names[at]);
            at
        } else {
            let (load, index, names) = (&self.load, &self.index, &self.names);
            let mut at = 0;
            self.tree.match_and_insert_with(text, |r| {
                let rate = if r.input_char_count == 0 {
                    0.0
                } else {
                    r.matched_char_count as f64 / r.input_char_count as f64
                };
                let mut best: Option<usize> = None;
                if rate > CACHE_THRESHOLD {
                    for t in &r.matched_tenants {
                        if let Some(&i) = index.get(&**t) {
                            if best.is_none_or(|b| load[i] < load[b]) {
                                best = Some(i);
                            }
                        }
                    }
                }
                at = best.unwrap_or_else(|| least_loaded(load));
                Some(names[at].as_str())
            });
            at
        };
        self.load[chosen] += 1;
        chosen
    }

    fn finish(&mut self, replica: usize, _k: usize) {
        self.load[replica] -= 1;
    }
}
