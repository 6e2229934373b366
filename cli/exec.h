// The `dogpile exec` command: caches any command's output in the cache
// directory and replays it byte for byte (dogpile::CommandCache does the work).
//
// Thread safety: add_exec_command and the work it stores are for main()'s
// thread; the work forks background refreshes, so the process must be
// single-threaded when it runs.
#pragma once

#include <functional>

namespace CLI {
class App;
}  // namespace CLI

namespace dogpile::cli {

// Adds `exec` to `app`. When it is the parsed subcommand, its callback stores in `run` the work to do;
// main() calls run() inside a try block that maps dogpile::Error to exit 3 and prints e.what().
CLI::App* add_exec_command(CLI::App& app, std::function<int()>& run);

}  // namespace dogpile::cli
