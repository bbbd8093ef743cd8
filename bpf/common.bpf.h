/* What every capture program shares: its output buffer, drop counters and emit().
 *
 * USE_RINGBUF selects the BPF ring buffer (kernel >= 5.8; one buffer, records in order)
 * of OUTPUT_PAGES pages; otherwise a per-CPU perf buffer is used and user space orders
 * records by timestamp. A record the buffer refuses is counted in drops[slot]
 * (count_drop), read and summed over CPUs by user space.
 */
#ifndef RULELESS_COMMON_BPF_H
#define RULELESS_COMMON_BPF_H

#include "events.h"

#ifndef OUTPUT_PAGES
#define OUTPUT_PAGES 1024
#endif
/* Ring buffer output flags: BPF_RB_NO_WAKEUP (1) when user space consumes on a timer
 * instead of being woken for every record (one wake-up per exec costs the exec'ing
 * side a context switch). */
#ifndef OUTPUT_FLAGS
#define OUTPUT_FLAGS 0
#endif

#ifdef USE_RINGBUF
BPF_RINGBUF_OUTPUT(events, OUTPUT_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);

/* The output call and the drop count are spelled out in each probe (#ifdef
 * USE_RINGBUF): BCC rewrites map method calls neither inside macros nor in every helper
 * function (a drop-counting helper compiled to an indirect call the kernel rejects). */

#endif
