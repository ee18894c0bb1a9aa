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
#include <string>
#include <system_error>
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
    done_ = done;
    total_ = total;
    fire(now);
  }
  // Called from the owning thread between blocks of work that report no progress of their own
  // (a long input projection): as tick, with the last progress reported, (0, 0) before any.
  void check() {
    if (cancelled_.load(std::memory_order_relaxed)) throw Cancelled();
    if (!callback_) return;
    const auto now = Clock::now();
    if (now - last_ < interval_) return;
    fire(now);
  }
  // Called from worker threads: cheap.
  void poll() const {
    if (cancelled_.load(std::memory_order_relaxed)) throw Cancelled();
  }
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  using Clock = std::chrono::steady_clock;
  void fire(Clock::time_point now) {
    last_ = now;
    try {
      callback_(done_, total_);
    } catch (...) {
      cancel();
      throw;
    }
  }
  Callback callback_;
  Clock::duration interval_{};
  Clock::time_point last_ = Clock::now();
  std::size_t done_ = 0, total_ = 0;
  std::atomic<bool> cancelled_{false};
};

// Most threads one call uses: larger requests are clamped (the Python layer refuses them). Far
// above any useful count for CPU-bound work, low enough that a typo cannot ask for millions.
constexpr int kMaxThreads = 1024;

// Resolve a requested worker count (0 = hardware concurrency) against the work size.
inline std::size_t resolve_threads(int requested, std::size_t max_useful) {
  std::size_t n = requested > 0 ? static_cast<std::size_t>(requested)
                                : std::max(1u, std::thread::hardware_concurrency());
  n = std::min<std::size_t>(n, kMaxThreads);
  return std::max<std::size_t>(1, std::min(n, max_useful));
}

// The system refused a thread (std::thread threw): reported instead of std::terminate.
struct ThreadStartError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Test hook (vgcore._core.testing): after `allow` more starts, the next `refuse` thread starts
// fail as if the system refused them; `attempts` counts the starts tried.
struct ThreadStartHook {
  std::atomic<long> allow{0}, refuse{0}, attempts{0};
  static ThreadStartHook& instance() {
    static ThreadStartHook h;
    return h;
  }
  // Whether this start is to be refused (consumes one allowed or refused start).
  bool take() {
    attempts.fetch_add(1, std::memory_order_relaxed);
    if (refuse.load(std::memory_order_relaxed) <= 0) return false;
    for (long a = allow.load(); a > 0;)
      if (allow.compare_exchange_weak(a, a - 1)) return false;
    for (long r = refuse.load(); r > 0;)
      if (refuse.compare_exchange_weak(r, r - 1)) return true;
    return false;
  }
};

// Test hook (C++ tests): the next `helper_job_failures` jobs run by a helper thread
// (helper_thread.hpp: the Lyapunov engine's, the singular values') throw std::bad_alloc, as an
// allocation failure there would.
struct HelperFaultHook {
  std::atomic<long> helper_job_failures{0};
  static HelperFaultHook& instance() {
    static HelperFaultHook h;
    return h;
  }
  bool take() {
    for (long n = helper_job_failures.load(std::memory_order_relaxed); n > 0;)
      if (helper_job_failures.compare_exchange_weak(n, n - 1)) return true;
    return false;
  }
};

// std::thread(f), through the test hook: throws std::system_error when refused.
template <class F>
std::thread start_thread(F&& f) {
  if (ThreadStartHook::instance().take())
    throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                            "thread start refused by the test hook");
  return std::thread(std::forward<F>(f));
}

// Run fn(chunk) for chunk in [0, n_chunks) on n_chunks threads; chunk 0 runs on the
// calling thread (the only one allowed to call Control::tick). The first exception
// other than Cancelled is rethrown after every thread has joined. When a worker cannot be
// started, the ones already running are cancelled and joined, and ThreadStartError (or
// std::bad_alloc) is thrown.
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
  for (std::size_t c = 1; c < n_chunks; ++c) {
    try {
      workers.push_back(start_thread([&guarded, c] { guarded(c); }));
    } catch (...) {
      ctl.cancel();  // workers poll it: they stop at their next check
      for (auto& w : workers) w.join();
      try {
        throw;
      } catch (const std::system_error& e) {
        throw ThreadStartError("vgcore could not start thread " + std::to_string(c + 1) + " of " +
                               std::to_string(n_chunks) + " (" + e.what() +
                               "): the system allows no more threads; use fewer threads "
                               "(num_threads = " +
                               std::to_string(c) + " or less)");
      }
    }
  }
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
