// Standalone test of the one helper-thread mechanism (csrc/vgcore/base/helper_thread.hpp) and of
// its users' fault path: every offered job runs exactly once, by the helper or by the caller
// that claims it back, with and without the helper's idle spin; an exception thrown on the
// helper (the fault hook's bad_alloc) comes back from wait(); the singular values of a Jacobian
// product (one sample on two threads: the T updates go to the helper) hand a helper's bad_alloc
// to their caller, and a later call gives the same numbers as a single-threaded one;
// parallel_rows covers every row once in bounded blocks and lets its caller's Control stop a
// long phase between blocks (the progress known so far, (0, 0) before any).
//
// Returns 0 if every check passed. Build: see tests/cpp/README.md.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <new>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "vgcore/analysis/singular.hpp"
#include "vgcore/base/helper_thread.hpp"
#include "vgcore/base/parallel_rows.hpp"
#include "vgcore/model/model.hpp"

using namespace vgcore;

static int g_failures = 0, g_checks = 0;

static void check(bool ok, const char* what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s\n", what);
  }
}

struct Job {
  std::atomic<int> runs{0};
  static void run(void* c) { static_cast<Job*>(c)->runs.fetch_add(1); }
};

// Each job runs exactly once, whoever runs it.
void check_exactly_once(std::int64_t spin_ns) {
  HelperThread h(spin_ns);
  const int n = 2000;
  std::vector<Job> jobs(n);
  int by_caller = 0, by_helper = 0;
  bool ok = true;
  for (int i = 0; i < n; ++i) {
    h.offer(&Job::run, &jobs[i]);
    if (i % 3 == 0) std::this_thread::yield();  // give the helper a chance now and then
    if (h.claim()) {
      Job::run(&jobs[i]);
      ++by_caller;
    } else {
      if (h.wait(steady_ns(), 20000)) ok = false;
      ++by_helper;
    }
    ok = ok && jobs[i].runs.load() == 1;
  }
  for (auto& j : jobs) ok = ok && j.runs.load() == 1;
  check(ok, "every offered job runs exactly once");
  std::printf("spin %lld ns: %d jobs by the caller, %d by the helper\n",
              static_cast<long long>(spin_ns), by_caller, by_helper);
}

// A helper's exception comes back from wait(); the helper keeps working afterwards.
void check_exception() {
  HelperThread h(0);
  Job j;
  HelperFaultHook::instance().helper_job_failures.store(1);
  h.offer(&Job::run, &j);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (h.claim()) {  // the helper never got to it (a busy machine): nothing to check
    HelperFaultHook::instance().helper_job_failures.store(0);
    std::printf("note: helper fault not exercised (the caller claimed the job)\n");
    return;
  }
  bool caught = false;
  try {
    if (std::exception_ptr e = h.wait(steady_ns(), 0)) std::rethrow_exception(e);
  } catch (const std::bad_alloc&) {
    caught = true;
  }
  check(caught && j.runs.load() == 0, "the helper's bad_alloc reaches the caller");
  Job j2;
  h.offer(&Job::run, &j2);
  if (!h.claim()) {
    check(!h.wait(steady_ns(), 0), "no exception after the fault");
  } else {
    Job::run(&j2);
  }
  check(j2.runs.load() == 1, "the helper works after a fault");
}

// A long LSTM product of one sample on two threads (T updates on the helper).
std::vector<double> singular_values(int threads, bool fault, bool& caught) {
  const std::size_t I = 3, N = 16, G = 4, steps = 300;
  std::mt19937 rng(7);
  std::normal_distribution<double> nd(0.0, 0.4);
  static std::vector<double> wih, whh, x;
  if (wih.empty()) {
    wih.resize(G * N * I);
    whh.resize(G * N * N);
    x.resize(steps * I);
    for (auto& v : wih) v = nd(rng);
    for (auto& v : whh) v = nd(rng);
    for (auto& v : x) v = nd(rng);
  }
  RecurrentWeights<double> w;
  w.kind = CellKind::lstm;
  w.input_size = I;
  w.hidden = N;
  w.weight_ih = wih.data();
  w.weight_hh = whh.data();
  const Model<double> m = Model<double>::recurrent(w);
  SingularOptions o;
  o.num_threads = threads;
  Control ctl;
  caught = false;
  if (fault) HelperFaultHook::instance().helper_job_failures.store(1);
  std::vector<double> out;
  try {
    out = jacobian_log_singular_values<double>(m, x.data(), steps, 1, nullptr, o, ctl).log_singular;
  } catch (const std::bad_alloc&) {
    caught = true;
  }
  return out;
}

void check_singular_values() {
  bool caught = false;
  const std::vector<double> one = singular_values(1, false, caught);
  const std::vector<double> two = singular_values(2, false, caught);
  check(one == two, "singular values: the same numbers on one and two threads");
  singular_values(2, true, caught);
  const long left = HelperFaultHook::instance().helper_job_failures.exchange(0);
  check(caught == (left == 0), "singular values: a helper's bad_alloc reaches the caller");
  if (!caught) std::printf("note: singular-value helper fault not exercised\n");
  const std::vector<double> again = singular_values(2, false, caught);
  check(again == one, "singular values: the same numbers after a helper fault");
}

static void check_parallel_rows() {
  const std::size_t rows = 5 * kParallelRowsBlock + 123;
  for (int threads : {1, 2}) {
    std::vector<std::atomic<int>> seen(rows);
    std::atomic<bool> too_big{false};
    std::vector<std::pair<std::size_t, std::size_t>> reported;
    Control ctl([&](std::size_t d, std::size_t t) { reported.emplace_back(d, t); }, 0.0);
    parallel_rows(threads, rows, 64, ctl, [&](std::size_t r0, std::size_t r1) {
      if (r1 - r0 > kParallelRowsBlock) too_big = true;
      for (std::size_t r = r0; r < r1; ++r) seen[r].fetch_add(1);
    });
    bool once = true;
    for (auto& s : seen) once = once && s.load() == 1;
    check(once && !too_big, "parallel_rows: every row exactly once, in bounded blocks");
    check(!reported.empty() && reported.front() == std::make_pair<std::size_t, std::size_t>(0, 0),
          "parallel_rows: the caller's Control is checked between blocks, (0, 0) before any tick");
    ctl.tick(7, 9);
    ctl.check();
    check(reported.back() == std::make_pair<std::size_t, std::size_t>(7, 9),
          "Control::check repeats the last progress reported");
  }
  // a callback that throws (Ctrl-C) stops the phase between blocks, on every thread
  std::atomic<std::size_t> done_rows{0};
  Control stop([](std::size_t, std::size_t) { throw std::runtime_error("stop"); }, 0.0);
  bool caught = false;
  try {
    parallel_rows(2, rows, 64, stop, [&](std::size_t r0, std::size_t r1) {
      done_rows += r1 - r0;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    });
  } catch (const std::runtime_error&) {
    caught = true;
  }
  check(caught && done_rows.load() < rows, "parallel_rows: a throwing callback stops the phase");
}

int main() {
  check_parallel_rows();
  check_exactly_once(0);
  check_exactly_once(50000);
  check_exception();
  check_singular_values();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
