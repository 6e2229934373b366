// dogpile: the command-line tool. Parses arguments and maps outcomes to exit
// codes: 0 ok, 1 a demo check failed, 2 usage error, 3 cache error.
#include <CLI/CLI.hpp>
#include <exception>
#include <iostream>
#include <string>

#include "demo.h"
#include "dogpile/error.h"

#ifndef DOGPILE_VERSION
#error "DOGPILE_VERSION must be defined by the build (cli/meson.build)"
#endif

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitCacheError = 3;
constexpr int kExitFailed = 1;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dogpile: a persistent on-disk cache shared by the processes of one host"};
  app.name("dogpile");
  app.set_version_flag("--version", std::string("dogpile ") + DOGPILE_VERSION,
                       "Print the version and exit");
  app.require_subcommand(1);

  dogpile::DemoOptions demo;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo",
      "Fork worker processes that all ask one on-disk cache for the same keys; show that each "
      "value is created once, what the cache saved, and each codec's size and speed");
  demo_cmd->add_option("--dir", demo.dir,
                       "Cache directory (default: $DOGPILE_DIR, else $XDG_CACHE_HOME/dogpile, "
                       "else ~/.cache/dogpile)");
  demo_cmd->add_option("--workers", demo.workers, "Worker processes")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  demo_cmd->add_option("--keys", demo.keys, "Keys every worker asks for")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  demo_cmd->add_option("--create-ms", demo.create_ms, "Milliseconds one creator call takes")
      ->capture_default_str()
      ->check(CLI::Range(0, 600000));
  demo_cmd->add_flag("--fresh", demo.fresh, "Erase the demo's keys first");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // CLI11's own codes for parse errors (100 and up) become the one usage code.
    return code == 0 ? 0 : kExitUsage;
  }

  try {
    if (*demo_cmd) return dogpile::run_demo(demo, std::cout);
  } catch (const dogpile::Error& e) {
    std::cout.flush();
    std::cerr << "dogpile: " << e.what() << "\n";
    return kExitCacheError;
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "dogpile: " << e.what() << "\n";
    return kExitFailed;
  }
  return kExitUsage;
}
