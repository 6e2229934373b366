// dogpile: the command-line tool. Parses arguments, runs the chosen
// subcommand and maps outcomes to exit codes: 0 ok, 1 not found or a miss,
// 2 usage error, 3 cache error.
#include <CLI/CLI.hpp>
#include <exception>
#include <functional>
#include <iostream>
#include <string>

#include "commands.h"
#include "exec.h"

#ifndef DOGPILE_VERSION
#error "DOGPILE_VERSION must be defined by the build (cli/meson.build)"
#endif

namespace {

namespace cli = dogpile::cli;

constexpr const char* kFooter =
    "Every subcommand takes --dir DIR (default: $DOGPILE_DIR, else $XDG_CACHE_HOME/dogpile,\n"
    "else ~/.cache/dogpile) and --json (one JSON document on stdout), and has --help.\n"
    "\n"
    "Exit status:\n"
    "  0  success\n"
    "  1  not found: no such key or region, a cache miss, a failed demo check\n"
    "  2  usage error: unknown option, bad value, missing argument\n"
    "  3  cache error: missing or unusable cache directory, corrupt entry, verify\n"
    "     found problems, I/O error\n"
    "dogpile exec exits with the status of the command it runs or replays.\n"
    "\n"
    "Example:\n"
    "  dogpile stats && dogpile ls --limit 10";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dogpile: a persistent on-disk cache shared by the processes of one host"};
  app.name("dogpile");
  app.set_version_flag("--version", std::string("dogpile ") + DOGPILE_VERSION,
                       "Print the version and exit");
  app.require_subcommand(1);

  // The chosen subcommand's work, set by its parse callback.
  std::function<int()> run;
  cli::add_stats_command(app, run);
  cli::add_ls_command(app, run);
  cli::add_get_command(app, run);
  cli::add_rm_command(app, run);
  cli::add_purge_command(app, run);
  cli::add_clear_command(app, run);
  cli::add_invalidate_command(app, run);
  cli::add_verify_command(app, run);
  cli::add_compact_command(app, run);
  cli::add_exec_command(app, run);
  cli::add_demo_command(app, run);
  app.footer(kFooter);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // CLI11's own codes for parse errors (100 and up) become the one usage code.
    return code == 0 ? cli::kExitOk : cli::kExitUsage;
  }
  if (!run) return cli::kExitUsage;

  int code;
  try {
    code = run();
  } catch (const std::exception& e) {
    // dogpile::Error, and anything else that stops a command (fork, pipe,
    // memory): a failure of the cache or the system, never a miss.
    std::cout.flush();
    std::cerr << "dogpile: " << e.what() << "\n";
    return cli::kExitCacheError;
  }
  // Output that could not be written (a full disk, a closed pipe with
  // SIGPIPE ignored) must not look like success.
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "dogpile: error writing to standard output\n";
    return cli::kExitCacheError;
  }
  return code;
}
