// Host memory between calls (internal): keep what a call freed for the next call.
#pragma once

namespace equiformer {

// Asks glibc, once per process, to serve large allocations from the heap and never trim it,
// unless EQUIFORMER_KEEP_FREED_MEMORY=0. Why: see host_memory.cpp. Returns whether it is set.
bool keep_freed_host_memory();

}  // namespace equiformer
