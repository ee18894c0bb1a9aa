// Reusable scratch memory for the kernels.
//
// A gradient-flow call needs buffers proportional to depth x batch x width (hundreds of MB
// for big runs). Fresh allocations come from mmap, so every call would pay page faults and
// kernel zeroing for all of it (10-15% of a run). Buffers released here are cached, up to a
// limit, and handed to the next call; contents are not initialised.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace vgcore {

// Large blocks (>= 4 MiB: packed weight matrices, per-step state arrays) come 2 MiB-aligned
// and marked for transparent huge pages where the kernel only grants them on request
// (transparent_hugepage = madvise): a step that streams a 16 MB packed W_hh otherwise walks
// 4096 pages and misses the TLB on most of them. Smaller blocks are 64-byte aligned.
// `huge_pages = false` for blocks that are streamed once per call (a sweep's per-step caches):
// faulting a fresh gigabyte in as huge pages compacts memory on the way (defrag = madvise), a
// first call twice as slow for no TLB gain.
inline void* allocate_aligned(std::size_t bytes, std::size_t* got = nullptr,
                              bool huge_pages = true) {
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  const bool huge = huge_pages && bytes >= 2 * kHuge;
  const std::size_t align = huge ? kHuge : 64;
  const std::size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  if (got) *got = rounded;
  return p;
}

// std::vector allocator over allocate_aligned (for buffers that are resized in place).
template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(allocate_aligned(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const AlignedAllocator<U>&) const noexcept {
    return false;
  }
};

class WorkspacePool {
 public:
  static WorkspacePool& instance() {
    static WorkspacePool pool;
    return pool;
  }

  void* acquire(std::size_t bytes, bool huge_pages = true) {
    if (bytes == 0) return nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Smallest cached block that fits without wasting more than half of it.
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second.first;
        cached_ -= it->first;
        sizes_[p] = it->first;
        free_.erase(it);
        return p;
      }
    }
    std::size_t rounded = 0;
    void* p = allocate_aligned(bytes, &rounded, huge_pages);
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = rounded;
    return p;
  }

  void release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sizes_.find(p);
    const std::size_t bytes = it == sizes_.end() ? 0 : it->second;
    if (it != sizes_.end()) sizes_.erase(it);
    if (bytes == 0 || bytes > limit_) {
      std::free(p);
      return;
    }
    // Evict the largest cached blocks until this one fits under the limit.
    while (cached_ + bytes > limit_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= last->first;
      std::free(last->second.first);
      free_.erase(last);
    }
    free_.emplace(bytes, std::make_pair(p, 0));
    cached_ += bytes;
  }

  // Free every cached block; returns the bytes released.
  std::size_t clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t n = cached_;
    for (auto& kv : free_) std::free(kv.second.first);
    free_.clear();
    cached_ = 0;
    return n;
  }

  void set_limit(std::size_t bytes) {
    limit_ = bytes;
    if (cached_ > limit_) clear();
  }
  std::size_t limit() const { return limit_; }
  std::size_t cached() const { return cached_; }

 private:
  WorkspacePool() = default;
  ~WorkspacePool() { clear(); }
  std::mutex mutex_;
  std::multimap<std::size_t, std::pair<void*, int>> free_;
  std::map<void*, std::size_t> sizes_;
  std::size_t cached_ = 0;
  std::size_t limit_ = std::size_t(2) << 30;  // 2 GiB
};

// Move-only, uninitialised array of T from the pool (a std::vector without the zero fill).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t n, bool huge_pages = true) { resize(n, huge_pages); }
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  // Discards the contents.
  void resize(std::size_t n, bool huge_pages = true) {
    reset();
    if (n) p_ = static_cast<T*>(WorkspacePool::instance().acquire(n * sizeof(T), huge_pages));
    n_ = n;
  }
  void assign(std::size_t n, T value) {
    resize(n);
    for (std::size_t i = 0; i < n; ++i) p_[i] = value;
  }
  void reset() {
    WorkspacePool::instance().release(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T& operator[](std::size_t i) { return p_[i]; }
  const T& operator[](std::size_t i) const { return p_[i]; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace vgcore
