/// @file parallel.hpp
/// @brief The CPU backend's one thread pool and the two loops every op uses: parallel_for over index ranges and
/// parallel_tasks over independent tiles handed out one at a time. Include <sdlora/sdlora.hpp> instead.
///
/// Why not OpenMP: libgomp's threads spin at every barrier and between regions. On a machine whose cores are shared
/// (a compile running beside a training run) a spinning thread burns the time slice its partner needs, and a
/// descheduled partner stalls the whole region; measured on 2 shared cores, the SD 1.5 UNet step took 2-3x longer with
/// libgomp's default wait policy than with OMP_WAIT_POLICY=passive. This pool's idle threads sleep on a condition
/// variable; a caller never waits for a helper that has not started (late wakers find no job), tasks are claimed
/// from an atomic counter (a descheduled thread's share is taken by the others), the calling thread works too, and a
/// nested call (a kernel inside a task) runs serially on its thread. Exceptions thrown by a task reach the caller.
#pragma once

#include <algorithm>           // std::min
#include <atomic>              // std::atomic
#include <condition_variable>  // std::condition_variable
#include <cstdint>             // std::uint64_t
#include <exception>           // std::exception_ptr, std::current_exception, std::rethrow_exception
#include <mutex>               // std::mutex, std::lock_guard, std::unique_lock
#include <thread>              // std::thread
#include <type_traits>         // std::remove_reference_t
#include <vector>              // std::vector

#include <sdlora/core/backend.hpp>  // Context<Cpu>
#include <sdlora/core/shape.hpp>    // Index

namespace sdlora::cpu {

/// The process's worker threads (started on first use, as many as the largest request so far, minus the caller).
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ThreadPool(ThreadPool const&) = delete;
  ThreadPool& operator=(ThreadPool const&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  /// True on a thread that is running a task of this pool (so a kernel called from a task runs serially).
  static bool inside_task() { return in_task_flag(); }

  /// body(task, worker) for every task in [0, tasks) on at most `threads` threads; worker is in [0, threads) and no
  /// two concurrent calls of body share one. Serial when threads or tasks <= 1, inside a task, or while another
  /// thread of the program is using the pool.
  template <class F>
  void run(int threads, Index tasks, F& body) {
    if (threads <= 1 || tasks <= 1 || inside_task() || !busy_.try_lock()) {
      for (Index t = 0; t < tasks; ++t) body(t, 0);
      return;
    }
    std::lock_guard<std::mutex> busy(busy_, std::adopt_lock);
    int const helpers = int(std::min<Index>(threads, tasks)) - 1;
    Job job(&invoke<F>, &body, tasks);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (int(workers_.size()) < helpers) {
        int const id = int(workers_.size()) + 1;
        workers_.emplace_back([this, id] { worker_loop(id); });
      }
      job_ = &job;
      helpers_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    work(job, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = nullptr;  // helpers that wake from now on find nothing to join
    done_.wait(lock, [&] { return active_ == 0; });
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  ThreadPool() = default;

  struct Job {
    Job(void (*c)(void*, Index, int), void* b, Index n) : call(c), body(b), tasks(n) {}
    void (*call)(void*, Index, int);
    void* body;
    Index tasks;
    std::atomic<Index> next{0};
    std::mutex error_mutex;
    std::exception_ptr error;
  };

  template <class F>
  static void invoke(void* body, Index task, int worker) {
    (*static_cast<F*>(body))(task, worker);
  }

  static bool& in_task_flag() {
    thread_local bool flag = false;
    return flag;
  }

  static void work(Job& job, int worker) {
    in_task_flag() = true;
    for (Index t = job.next.fetch_add(1); t < job.tasks; t = job.next.fetch_add(1)) {
      try {
        job.call(job.body, t, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job.error_mutex);
        if (!job.error) job.error = std::current_exception();
        job.next.store(job.tasks);  // the other threads stop claiming tasks
      }
    }
    in_task_flag() = false;
  }

  void worker_loop(int id) {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (job_ != nullptr && generation_ != seen && id <= helpers_); });
      if (stop_) return;
      seen = generation_;
      Job* job = job_;
      ++active_;
      lock.unlock();
      work(*job, id);
      lock.lock();
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::mutex busy_;   // held by the one caller the pool serves at a time
  std::mutex mutex_;  // guards everything below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Job* job_ = nullptr;
  int helpers_ = 0;     // workers 1..helpers_ may join the current job
  int active_ = 0;      // workers inside the current job
  std::uint64_t generation_ = 0;
  bool stop_ = false;
};

/// body(task, worker) for task in [0, tasks), claimed one at a time by up to ctx.threads() threads (the caller
/// included); `worker` indexes per-thread scratch.
template <class F>
void parallel_tasks(Context<Cpu> const& ctx, Index tasks, F&& body) {
  ThreadPool::instance().run(ctx.threads(), tasks, body);
}

/// body(i) for i in [0, n), split into contiguous chunks (about four per thread) when `worth_it`, else serial.
/// For loops whose iterations are independent; the result never depends on how the range was split.
template <class F>
void parallel_for(Context<Cpu> const& ctx, Index n, bool worth_it, F&& body) {
  int const threads = worth_it ? ctx.threads() : 1;
  if (threads <= 1 || n <= 1) {
    for (Index i = 0; i < n; ++i) body(i);
    return;
  }
  Index const chunks = std::min<Index>(n, Index(4) * threads), size = (n + chunks - 1) / chunks;
  auto chunk = [&](Index c, int) {
    Index const end = std::min(n, (c + 1) * size);
    for (Index i = c * size; i < end; ++i) body(i);
  };
  ThreadPool::instance().run(threads, (n + size - 1) / size, chunk);
}

/// The sum over i in [0, n) of term(i) in double, in fixed blocks of `kBlock` summed in order, so the result does
/// not depend on the thread count.
template <class F>
double parallel_sum(Context<Cpu> const& ctx, Index n, F&& term) {
  constexpr Index kBlock = 16384;
  Index const blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(std::size_t(blocks), 0.0);
  parallel_tasks(ctx, blocks, [&](Index b, int) {
    double s = 0;
    for (Index i = b * kBlock, end = std::min(n, (b + 1) * kBlock); i < end; ++i) s += term(i);
    partial[std::size_t(b)] = s;
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace sdlora::cpu
