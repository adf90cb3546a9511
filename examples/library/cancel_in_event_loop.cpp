/// @file cancel_in_event_loop.cpp
/// @brief Generation inside another program's event loop: a worker thread runs pipeline::txt2img, its step callback
/// posts one event per step to the main loop's queue, and the main loop (a GUI's, a server's) cancels the run after
/// K steps by setting a flag the callback reads; txt2img then throws GenerationCancelled and nothing is written.
/// Walk-through: docs/tutorials/library.md.
///
///   sdlora-example-cancel MODEL OUT.png CANCEL_AFTER [SIZE=512] [STEPS=20]    (CANCEL_AFTER 0: never cancel)
#include <atomic>              // std::atomic
#include <condition_variable>  // std::condition_variable
#include <cstdio>              // std::printf
#include <deque>               // std::deque
#include <mutex>               // std::mutex, std::unique_lock
#include <string>              // std::string, std::stoi
#include <thread>              // std::thread

#include <sdlora/instances.hpp>          // the CPU kernels; txt2img<float> comes compiled from sdlora::instances
#include <sdlora/io/image.hpp>           // io::save_png
#include <sdlora/models/checkpoint.hpp>  // models::load_stable_diffusion
#include <sdlora/pipeline/txt2img.hpp>   // pipeline::txt2img, StepInfo, GenerationCancelled

using namespace sdlora;

/// What the worker tells the main loop: a finished step, or the end of the run with its outcome.
struct Event { int step = 0, total = 0; bool finished = false; std::string outcome; };

int main(int argc, char** argv) {
  if (argc < 4) return std::fprintf(stderr, "usage: %s MODEL OUT.png CANCEL_AFTER [SIZE] [STEPS]\n", argv[0]), 2;
  std::string const model = argv[1], out = argv[2];
  int const cancel_after = std::stoi(argv[3]);
  pipeline::GenerateOptions o;
  o.prompt = "a photo of a cat";
  o.sampler = "euler";
  o.width = o.height = argc > 4 ? std::stoi(argv[4]) : 512;
  o.steps = argc > 5 ? std::stoi(argv[5]) : 20;
  std::mutex m;
  std::condition_variable cv;
  std::deque<Event> queue;
  std::atomic<bool> cancel{false};
  int handled = 0;  // events the main loop has handled; the worker waits for its step's (a progress display's pace)
  auto post = [&](Event e) {
    std::lock_guard lock(m);
    queue.push_back(std::move(e));
    cv.notify_all();
  };

  std::thread worker([&] {
    try {
      Context<Cpu> ctx;
      auto sd = models::load_stable_diffusion<float>(model);
      auto image = pipeline::txt2img(ctx, sd, o, [&](pipeline::StepInfo const& s) {
        post({s.step + 1, s.total, false, ""});
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return handled >= s.step + 1; });
        return !cancel.load();  // false: txt2img stops here and throws GenerationCancelled
      });
      io::save_png(out, image.images.view().reshaped(Shape{3, o.height, o.width}));
      post({0, 0, true, "wrote " + out});
    } catch (std::exception const& e) {  // pipeline::GenerationCancelled ("cancelled at step K of N") or an error
      post({0, 0, true, e.what()});
    }
  });

  for (bool running = true; running;) {  // the host program's loop: wait for an event, handle it
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return !queue.empty(); });
    Event const e = queue.front();
    queue.pop_front();
    if (e.finished) {
      std::printf("%s\n", e.outcome.c_str());
      running = false;
    } else {
      std::printf("step %d of %d\n", e.step, e.total);
      if (e.step == cancel_after) cancel = true;  // e.g. the user pressed Cancel
      ++handled;
    }
    cv.notify_all();
  }
  worker.join();
  return 0;
}
