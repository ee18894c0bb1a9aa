// One helper thread beside the caller, for work the caller can always do itself (the Lyapunov
// engine's second half of a step, the singular values' pending T update).
//
// The caller offers a job; the helper runs it if it claims it first, otherwise the caller claims
// it back and runs it itself. Claims are tagged with the offer's number, so a late helper can
// never take a finished offer. The arithmetic is the caller's business and must not depend on
// who runs a job: then results depend on the thread setting at most, never on timing. A caller
// whose claim fails waits for the helper: it spins while the helper is plausibly running, then
// blocks, so that its core goes idle and the scheduler can pull a preempted helper onto it.
// An idle helper spins idle_spin_ns (0: none), then sleeps until the next offer. An exception
// thrown by a job on the helper is handed to the caller by wait(), never std::terminate.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <thread>
#include <utility>

#include "vgcore/base/control.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // _mm_pause
#endif

namespace vgcore {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

inline std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class HelperThread {
 public:
  // Starts the thread (through start_thread: throws std::system_error when none is to be had).
  explicit HelperThread(std::int64_t idle_spin_ns)
      : spin_ns_(idle_spin_ns), thread_(start_thread([this] { loop(); })) {}
  ~HelperThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_one();
    thread_.join();
  }
  HelperThread(const HelperThread&) = delete;
  HelperThread& operator=(const HelperThread&) = delete;

  // Offers job(ctx) to the helper; both must stay valid until claim() succeeds or wait()
  // returns. Returns whether the helper was asleep (it is woken).
  bool offer(void (*job)(void*), void* ctx) {
    job_ = job;
    ctx_ = ctx;
    const std::uint64_t e = ++phase_;
    epoch_.store(e, std::memory_order_seq_cst);
    const bool asleep = sleeping_.load(std::memory_order_seq_cst);
    if (asleep) wake();
    return asleep;
  }

  // The caller takes the last offer back: true when the helper had not claimed it (then the
  // caller runs the job), false when the helper has it (then the caller must wait()).
  bool claim() {
    std::uint64_t expect = phase_ - 1;
    return claim_.compare_exchange_strong(expect, phase_, std::memory_order_acq_rel);
  }

  // After a failed claim: waits until the helper has run the job, spinning until patience_ns
  // after `since` (steady_ns()), then blocking. Returns the job's exception, if it threw.
  std::exception_ptr wait(std::int64_t since, std::int64_t patience_ns) {
    const std::uint64_t e = phase_;
    int spins = 0;
    while (done_.load(std::memory_order_acquire) != e) {
      cpu_relax();
      if (++spins % 64 == 0 && steady_ns() - since > patience_ns) {
        std::unique_lock<std::mutex> lock(mu_);
        waiting_.store(true, std::memory_order_seq_cst);
        cv_main_.wait(lock, [&] { return done_.load(std::memory_order_seq_cst) == e; });
        waiting_.store(false, std::memory_order_seq_cst);
        break;
      }
    }
    return std::exchange(error_, nullptr);
  }

 private:
  void wake() {
    {
      std::lock_guard<std::mutex> lock(mu_);
    }
    cv_.notify_one();
  }

  void loop() {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t e = epoch_.load(std::memory_order_acquire);
      if (e == seen) {
        if (spin_ns_ > 0) {
          const std::int64_t t0 = steady_ns();
          int spins = 0;
          while ((e = epoch_.load(std::memory_order_acquire)) == seen && !stop_.load()) {
            cpu_relax();
            if (++spins % 256 == 0 && steady_ns() - t0 > spin_ns_) break;
          }
        }
        if (e == seen && !stop_.load()) {
          std::unique_lock<std::mutex> lock(mu_);
          sleeping_.store(true, std::memory_order_seq_cst);
          cv_.wait(lock,
                   [&] { return stop_.load() || epoch_.load(std::memory_order_seq_cst) != seen; });
          sleeping_.store(false, std::memory_order_seq_cst);
          e = epoch_.load(std::memory_order_acquire);
        }
      }
      if (stop_.load()) return;
      seen = e;
      std::uint64_t expect = e - 1;
      if (!claim_.compare_exchange_strong(expect, e, std::memory_order_acq_rel)) continue;
      try {
        if (HelperFaultHook::instance().take()) throw std::bad_alloc();
        job_(ctx_);
      } catch (...) {
        error_ = std::current_exception();  // published by the done_ store below
      }
      done_.store(e, std::memory_order_seq_cst);
      if (waiting_.load(std::memory_order_seq_cst)) {
        {
          std::lock_guard<std::mutex> lock(mu_);
        }
        cv_main_.notify_one();
      }
    }
  }

  const std::int64_t spin_ns_;
  std::uint64_t phase_ = 0;  // caller only
  void (*job_)(void*) = nullptr;
  void* ctx_ = nullptr;
  std::exception_ptr error_;  // written by the helper before done_, read after it
  alignas(64) std::atomic<std::uint64_t> epoch_{0};
  alignas(64) std::atomic<std::uint64_t> claim_{0};
  alignas(64) std::atomic<std::uint64_t> done_{0};
  std::atomic<bool> sleeping_{false}, waiting_{false}, stop_{false};
  std::mutex mu_;
  std::condition_variable cv_, cv_main_;
  std::thread thread_;  // last: starts after everything above is initialised
};

}  // namespace vgcore
