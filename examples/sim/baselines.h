/* baselines.h - the published policies rebuilt as policy modules, and the
 * gateway's own view of the fleet that they (and the simple policies) read. */
#ifndef SPOTINFER_SIM_BASELINES_H
#define SPOTINFER_SIM_BASELINES_H

#include "sim.h"

typedef int (*sim_choose_fn)(void *state, void *instance, const spi_route_context *ctx,
                             spi_policy_choice *out);
typedef int (*sim_reg_fn)(spi_engine *e, const char *name, sim_choose_fn choose,
                          void *state, spi_module_destroy_fn destroy);

/* Candidate's replica index (simulator ids are "r<index>-..."). */
uint32_t sim_cand_replica(const spi_candidate *c);
/* The prompt's blocks as chained hashes into *buf; the count or -1. */
int sim_prompt_chain(const spi_request_view *rq, uint64_t **buf, size_t *cap);

/* Registers "sim-greedy", "sim-sglang" and "sim-epp" (only: just that one,
 * or none when it names another module). */
int sim_register_baselines(spi_engine *e, const sim_gw_view *view, sim_reg_fn reg,
                           const char *only);

#endif
