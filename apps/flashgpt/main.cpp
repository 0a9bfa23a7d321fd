// flashgpt: train and run GPT language models. Only this function catches errors: it prints one
// line naming what went wrong and exits non-zero.
#include <cstdio>
#include <exception>
#include <string>

#include "commands.h"
#include "flashgpt/core/error.h"
#include "flashgpt/core/threads.h"

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
    std::fprintf(stderr, "flashgpt: error: %s (see --help)\n", e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  } catch (const flashgpt::Error& e) {
    std::fprintf(stderr, "flashgpt: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "flashgpt: error: out of memory (try a smaller model, batch or sequence length)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashgpt: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
