//! NVIDIA Dynamo's KV-router core (crate `dynamo-kv-router`): the prompt's
//! tokens hashed into 16-token blocks, the longest cached prefix of every
//! worker found in the radix tree, and the default selector (its default
//! KvRouterConfig: overlap credit 1.0, temperature 0, so the lowest cost
//! wins and ties are broken at random) over the workers' loads.
//!
//! Tokens: the router receives token ids from the frontend's tokenizer; here
//! every four prompt bytes are one token (as the EPP assumes four characters
//! per token), made before the timed span. The block stores the engine would
//! publish after serving the request are applied to the tree after the timed
//! span, as KV events arrive off the routing path. Loads: replica i starts
//! with running + waiting requests in flight, each waiting one holding a
//! prompt's tokens of prefill and each running one a prompt's blocks of
//! decode; a routed request adds its uncached tokens and its blocks until it
//! finishes.

use std::collections::{HashMap, HashSet, VecDeque};

use dynamo_kv_router::protocols::{
    compute_block_hash_for_seq, compute_seq_hash_for_block, BlockHashOptions,
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheStoreData,
    KvCacheStoredBlockData, LocalBlockHash, RouterEvent, RoutingConstraints, WorkerConfigLike,
    WorkerId, WorkerWithDpRank,
};
use dynamo_kv_router::scheduling::{OverlapSignals, ScheduleMode};
use dynamo_kv_router::{
    DefaultWorkerSelector, KvRouterConfig, RadixTree, SchedulingRequest, WorkerLoadProjection,
    WorkerSelectionInput, WorkerSelector,
};

use crate::prompts;
use crate::Peer;

const BLOCK_SIZE: u32 = 16;

#[derive(Default)]
struct Worker {
    taints: HashSet<String>,
}

impl WorkerConfigLike for Worker {
    fn data_parallel_start_rank(&self) -> u32 {
        0
    }
    fn data_parallel_size(&self) -> u32 {
        1
    }
    fn max_num_batched_tokens(&self) -> Option<u64> {
        None
    }
    fn total_kv_blocks(&self) -> Option<u64> {
        None
    }
    fn taints(&self) -> &HashSet<String> {
        &self.taints
    }
}

pub struct Dynamo {
    tree: RadixTree,
    selector: DefaultWorkerSelector,
    workers: HashMap<WorkerId, Worker>,
    request: SchedulingRequest,
    tokens: Vec<Vec<u32>>,
    /// The last route's worker and prompt when the worker lacked some of
    /// its blocks: stored by `settle`.
    to_store: Option<(usize, usize)>,
    /// Per open request, oldest first: the tokens it added to its worker's
    /// prefill.
    pending: VecDeque<usize>,
    event_id: u64,
}

fn tokens_of(p: &str) -> Vec<u32> {
    p.as_bytes()
        .chunks(4)
        .map(|c| c.iter().fold(0u32, |a, &b| (a << 8) | b as u32))
        .collect()
}

impl Dynamo {
    pub fn new(replicas: usize, all: Vec<String>) -> Self {
        let tokens: Vec<Vec<u32>> = all.iter().map(|p| tokens_of(p)).collect();
        let isl = tokens[0].len();
        let blocks = isl / BLOCK_SIZE as usize;
        let mut workers = HashMap::new();
        let mut loads = rustc_hash::FxHashMap::default();
        for i in 0..replicas {
            workers.insert(i as WorkerId, Worker::default());
            let (run, wait) = (prompts::running(i), prompts::waiting(i));
            loads.insert(
                WorkerWithDpRank::from_worker_id(i as WorkerId),
                WorkerLoadProjection {
                    active_prefill_tokens: wait * isl,
                    active_decode_blocks: run * blocks,
                    active_requests: run + wait,
                    additional_active_blocks: 0,
                },
            );
        }
        let request = SchedulingRequest {
            mode: ScheduleMode::QueryOnly { request_id: None },
            token_seq: None,
            isl_tokens: isl,
            lora_name: None,
            expected_output_tokens: None,
            affinity_target: None,
            pinned_worker: None,
            allowed_worker_ids: None,
            routing_constraints: RoutingConstraints::default(),
            router_config_override: None,
            track_prefill_tokens: true,
            priority_jump: 0.0,
            strict_priority: 0,
            policy_class: None,
            session_context: None,
            overlap: OverlapSignals {
                tier_overlap_blocks: Default::default(),
                effective_overlap_blocks: Default::default(),
                effective_cached_tokens: Default::default(),
            },
            kv_transfer_candidates: None,
            retain_kv_transfer_chain: false,
            shared_cache_hits: None,
            worker_loads: loads,
            resp_tx: None,
        };
        Dynamo {
            tree: RadixTree::new(),
            selector: DefaultWorkerSelector::new(Some(KvRouterConfig::default()), "prefill"),
            workers,
            request,
            tokens,
            to_store: None,
            pending: VecDeque::new(),
            event_id: 0,
        }
    }

    fn store(&mut self, worker: usize, hashes: Vec<LocalBlockHash>) {
        let seq = compute_seq_hash_for_block(&hashes);
        let blocks = hashes
            .iter()
            .zip(seq.iter())
            .map(|(&tokens_hash, &s)| KvCacheStoredBlockData {
                block_hash: ExternalSequenceBlockHash(s),
                tokens_hash,
                mm_extra_info: None,
            })
            .collect();
        self.event_id += 1;
        let event = RouterEvent::new(
            worker as WorkerId,
            KvCacheEvent {
                event_id: self.event_id,
                data: KvCacheEventData::Stored(KvCacheStoreData {
                    parent_hash: None,
                    start_position: None,
                    blocks,
                }),
                dp_rank: 0,
            },
        );
        if self.tree.apply_event(event).is_err() {
            eprintln!("peer-rust: the radix tree refused a store");
            std::process::exit(1);
        }
    }
}

impl Peer for Dynamo {
    fn route(&mut self, k: usize) -> usize {
        let hashes =
            compute_block_hash_for_seq(&self.tokens[k], BLOCK_SIZE, BlockHashOptions::default());
        let nblocks = hashes.len();
        let scores = self.tree.find_matches(hashes, false);
        let overlap = &mut self.request.overlap;
        overlap.tier_overlap_blocks.device.clear();
        overlap.effective_overlap_blocks.clear();
        overlap.effective_cached_tokens.clear();
        for (&w, &s) in &scores.scores {
            overlap.tier_overlap_blocks.device.insert(w, s as usize);
            overlap.effective_overlap_blocks.insert(w, s as f64);
            overlap
                .effective_cached_tokens
                .insert(w, s as usize * BLOCK_SIZE as usize);
        }
        self.request.isl_tokens = self.tokens[k].len();
        let picked = self
            .selector
            .select_worker(WorkerSelectionInput::configured(
                &self.workers,
                &self.request,
                self.request.eligibility(),
                BLOCK_SIZE,
            ))
            .unwrap_or_else(|_| {
                eprintln!("peer-rust: the selector found no worker");
                std::process::exit(1);
            });
        let w = picked.worker;
        let cached = scores.scores.get(&w).copied().unwrap_or(0) as usize;
        let new_tokens = self.tokens[k]
            .len()
            .saturating_sub(cached * BLOCK_SIZE as usize);
        if let Some(l) = self.request.worker_loads.get_mut(&w) {
            l.active_prefill_tokens += new_tokens;
            l.active_decode_blocks += nblocks;
            l.active_requests += 1;
        }
        self.pending.push_back(new_tokens);
        if cached < nblocks {
            self.to_store = Some((w.worker_id as usize, k));
        }
        w.worker_id as usize
    }

    fn settle(&mut self) {
        if let Some((worker, k)) = self.to_store.take() {
            let hashes = compute_block_hash_for_seq(
                &self.tokens[k],
                BLOCK_SIZE,
                BlockHashOptions::default(),
            );
            self.store(worker, hashes);
        }
    }

    fn finish(&mut self, replica: usize, k: usize) {
        let new_tokens = self.pending.pop_front().unwrap_or_default();
        let blocks = self.tokens[k].len() / BLOCK_SIZE as usize;
        let w = WorkerWithDpRank::from_worker_id(replica as WorkerId);
        if let Some(l) = self.request.worker_loads.get_mut(&w) {
            l.active_prefill_tokens -= new_tokens;
            l.active_decode_blocks -= blocks;
            l.active_requests -= 1;
        }
    }
}
