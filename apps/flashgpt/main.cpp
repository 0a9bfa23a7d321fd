// flashgpt: train and run GPT language models. Only this function catches errors: it prints one
// line naming what went wrong and exits non-zero.
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/threads.h"
#include "flashgpt/dist/comm.h"

namespace {

// Prints the one error line and exits. In a job of several ranks the others may be waiting for
// this one, so the whole job is ended; ranks other than 0 wait a moment first, so an error that
// every rank hits is printed once, by rank 0.
int report_error(const std::string& message, int code) {
  const flashgpt::dist::LaunchInfo li = flashgpt::dist::launch_info();
  if (!flashgpt::dist::distributed() && li.under_launcher && li.world_rank != 0) {
    std::this_thread::sleep_for(std::chrono::seconds(2));  // the launcher ends this rank once rank 0 has failed
  }
  if (flashgpt::dist::distributed()) {
    flashgpt::dist::Communicator& w = flashgpt::dist::world();
    if (w.rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
    std::fprintf(stderr, "flashgpt: error: %s%s\n",
                 w.rank() != 0 ? ("rank " + std::to_string(w.rank()) + ": ").c_str() : "", message.c_str());
    w.abort(code);
  }
  std::fprintf(stderr, "flashgpt: error: %s\n", message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "flashgpt: train and run GPT language models with modern attention, in one native program.\n"
      "Start with `flashgpt prepare` (text to tokens), then `flashgpt train`, then `flashgpt sample`."};
  app.require_subcommand(1, 1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.set_version_flag("--version", "flashgpt " FLASHGPT_VERSION);
  app.parse_complete_callback([&] { flashgpt::set_num_threads(threads); });
  flashgpt::cli::register_prepare(app);
  flashgpt::cli::register_train(app);
  flashgpt::cli::register_sample(app);
  flashgpt::cli::register_eval(app);
  flashgpt::cli::register_info(app);
  flashgpt::cli::register_bench(app);
  flashgpt::cli::register_convert(app);
  flashgpt::cli::register_plot(app);
  flashgpt::cli::register_compress(app);
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known |= sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "flashgpt: error: unknown command '%s' (choose one of: %s)\n", argv[1], names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return report_error(std::string(e.what()) + " (see --help)", e.get_exit_code() != 0 ? e.get_exit_code() : 2);
  } catch (const flashgpt::Error& e) {
    return report_error(e.what(), 1);
  } catch (const std::bad_alloc&) {
    return report_error("out of memory (try a smaller model, batch or sequence length)", 1);
  } catch (const std::exception& e) {
    return report_error(e.what(), 1);
  }
  flashgpt::dist::finalize();
  return 0;
}
