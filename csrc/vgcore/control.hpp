// Progress reporting, cancellation and batch-parallel execution for long kernels.
//
// The core never talks to Python. A caller (the binding layer, or a C++ program)
// passes a Control whose callback is invoked from the calling thread at most every
// `interval` seconds; the callback may throw to stop the computation (the binding
// uses this to deliver Ctrl-C). Worker threads only poll an atomic flag.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <stdexcept>
#include <thread>
#include <vector>

namespace vgcore {

// Thrown inside worker threads once another thread has failed or was interrupted.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("vgcore: computation cancelled") {}
};

class Control {
 public:
  // callback(done, total): progress in abstract work units; may throw to stop.
  using Callback = std::function<void(std::size_t done, std::size_t total)>;

  Control() = default;
  explicit Control(Callback cb, double interval_seconds = 0.1)
      : callback_(std::move(cb)),
        interval_(std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(interval_seconds))) {}

  // Called from the thread that owns the Control (the caller's thread).
  void tick(std::size_t done, std::size_t total) {
    if (cancelled_.load(std::memory_order_relaxed)) throw Cancelled();
    if (!callback_) return;
    const auto now = Clock::now();
    if (now - last_ < interval_ && done < total) return;
    last_ = now;
    try {
      callback_(done, total);
    } catch (...) {
      cancel();
      throw;
    }
  }
  // Called from worker threads: cheap.
  void poll() const {
    if (cancelled_.load(std::memory_order_relaxed)) throw Cancelled();
  }
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;
  Callback callback_;
  Clock::duration interval_{};
  Clock::time_point last_ = Clock::now();
  std::atomic<bool> cancelled_{false};
};

// Resolve a requested worker count (0 = hardware concurrency) against the work size.
inline std::size_t resolve_threads(int requested, std::size_t max_useful) {
  std::size_t n = requested > 0 ? static_cast<std::size_t>(requested)
                                : std::max(1u, std::thread::hardware_concurrency());
  return std::max<std::size_t>(1, std::min(n, max_useful));
}

// Run fn(chunk) for chunk in [0, n_chunks) on n_chunks threads; chunk 0 runs on the
// calling thread (the only one allowed to call Control::tick). The first exception
// other than Cancelled is rethrown after every thread has joined.
template <class Fn>
void run_chunks(std::size_t n_chunks, Control& ctl, Fn&& fn) {
  if (n_chunks <= 1) {
    fn(std::size_t{0});
    return;
  }
  std::vector<std::exception_ptr> errors(n_chunks);
  std::vector<std::thread> workers;
  workers.reserve(n_chunks - 1);
  auto guarded = [&](std::size_t c) {
    try {
      fn(c);
    } catch (...) {
      errors[c] = std::current_exception();
      ctl.cancel();
    }
  };
  for (std::size_t c = 1; c < n_chunks; ++c) workers.emplace_back(guarded, c);
  guarded(0);
  for (auto& w : workers) w.join();
  std::exception_ptr first_cancel;
  for (auto& e : errors) {
    if (!e) continue;
    try {
      std::rethrow_exception(e);
    } catch (const Cancelled&) {
      if (!first_cancel) first_cancel = e;
    } catch (...) {
      throw;
    }
  }
  if (first_cancel) std::rethrow_exception(first_cancel);
}

// Split [0, n) into `parts` contiguous ranges of near-equal size.
inline std::pair<std::size_t, std::size_t> split_range(std::size_t n, std::size_t parts,
                                                       std::size_t i) {
  const std::size_t base = n / parts, extra = n % parts;
  const std::size_t begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

}  // namespace vgcore
