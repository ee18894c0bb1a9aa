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

namespace vgcore {

class WorkspacePool {
 public:
  static WorkspacePool& instance() {
    static WorkspacePool pool;
    return pool;
  }

  void* acquire(std::size_t bytes) {
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
    const std::size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
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
  explicit Buffer(std::size_t n) { resize(n); }
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
  void resize(std::size_t n) {
    reset();
    if (n) p_ = static_cast<T*>(WorkspacePool::instance().acquire(n * sizeof(T)));
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
