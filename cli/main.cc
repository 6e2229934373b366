// dogpile: the command-line tool. Parses arguments, runs the chosen
// subcommand and maps outcomes to exit codes: 0 ok, 1 not found or a miss,
// 2 usage error, 3 cache error.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <exception>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "dogpile/error.h"
#include "dogpile/status.h"
#include "dogpile/version.h"

#include "commands.h"
#include "exec.h"

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

// Edits (insert, delete, replace one character) that turn `a` into `b`.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The closest of `names` to `word` within two edits, or empty.
std::string closest(std::string_view word, const std::vector<std::string>& names) {
  std::string best;
  std::size_t best_distance = 3;  // farther than this is no suggestion
  for (const std::string& name : names) {
    const std::size_t d = edit_distance(word, name);
    if (d < best_distance) {
      best_distance = d;
      best = name;
    }
  }
  return best;
}

// "unknown command 'frobnicate'", with the closest command when one is near.
std::string unknown_command(const CLI::App& app, std::string_view word) {
  std::vector<std::string> names;
  for (const CLI::App* command : app.get_subcommands({})) names.push_back(command->get_name());
  const std::string best = closest(word, names);
  std::string out = "unknown command '" + std::string(word) + "'";
  if (!best.empty()) out += "; did you mean '" + best + "'?";
  return out;
}

// CLI11's wording for a parse error, in ours: an unknown option is named
// with the closest real one, stray words are quoted in the order given, an
// option without its value says so. Anything else keeps CLI11's text.
std::string parse_error_text(const CLI::App& command, const std::vector<std::string>& args,
                             const CLI::Error& e) {
  // By type: CLI11 names an ExtrasError after the app that threw it.
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    std::vector<std::string> options;
    for (const CLI::Option* o : command.get_options()) {
      for (const std::string& long_name : o->get_lnames()) options.push_back("--" + long_name);
    }
    // CLI11 lists the words it did not take after a colon, last first;
    // put them back in the order they were given.
    const std::string text = e.what();
    std::vector<std::string> listed;
    std::istringstream words(text.substr(text.find(':') + 1));
    for (std::string word; words >> word;) listed.push_back(word);
    std::vector<std::string> extras;
    for (const std::string& word : args) {
      if (std::find(listed.begin(), listed.end(), word) != listed.end() &&
          std::find(extras.begin(), extras.end(), word) == extras.end()) {
        extras.push_back(word);
      }
    }
    std::string out;
    for (const std::string& extra : extras) {
      if (!out.empty()) out += "; ";
      if (extra.size() > 1 && extra[0] == '-') {
        // "--dir=x" is looked up as "--dir".
        const std::string flag = extra.substr(0, extra.find('='));
        out += "unknown option '" + extra + "'";
        if (const std::string near = closest(flag, options); !near.empty()) {
          out += "; did you mean '" + near + "'?";
        }
      } else {
        out += "unexpected argument '" + extra + "'";
      }
    }
    if (!out.empty()) return out;
  }
  std::string text = e.what();
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) != nullptr &&
      text.find(" required ") != std::string::npos &&
      text.find(" missing") != std::string::npos) {
    return text.substr(0, text.find(':')) + ": needs a value";
  }
  return text;
}

// A dogpile::Error's text without the status code's name in front
// ("io_error: "): that name is for programs, the sentence is for people.
std::string error_text(const std::exception& e) {
  std::string text = e.what();
  if (const auto* error = dynamic_cast<const dogpile::Error*>(&e)) {
    const std::string prefix = std::string(dogpile::status_code_name(error->code())) + ": ";
    if (text.rfind(prefix, 0) == 0) text.erase(0, prefix.size());
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dogpile: a persistent on-disk cache shared by the processes of one host"};
  app.name("dogpile");
  // The libraries' versions too: a bug report needs them.
  app.set_version_flag("--version",
                       "dogpile " + dogpile::version() + "\nLMDB " + dogpile::lmdb_version() +
                           ", cereal " + dogpile::cereal_version(),
                       "Print the versions of dogpile, LMDB and cereal and exit");
  app.require_subcommand(1);
  // Set before the subcommands are added: they copy it.
  // The arguments as given, for error messages.
  const std::vector<std::string> given(argv + 1, argv + argc);
  app.failure_message([&given](const CLI::App* command, const CLI::Error& e) {
    // The subcommand being parsed when the error came, if any.
    std::string help = "dogpile --help";
    const CLI::App* parsed = command;
    if (command != nullptr && !command->get_subcommands().empty()) {
      parsed = command->get_subcommands().front();
      help = "dogpile " + parsed->get_name() + " --help";
    }
    const std::string text =
        parsed != nullptr ? parse_error_text(*parsed, given, e) : std::string(e.what());
    return "dogpile: " + text + "\nRun '" + help + "' for usage.\n";
  });

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

  // `dogpile help [COMMAND]`, as git and cargo have it.
  std::vector<std::string> args = given;
  if (!args.empty() && args[0] == "help") {
    args.erase(args.begin());
    args.push_back("--help");  // wins over anything else given
  }
  if (!args.empty() && !args[0].empty() && args[0][0] != '-') {
    const auto commands = app.get_subcommands({});
    const bool known = std::any_of(commands.begin(), commands.end(), [&](const CLI::App* c) {
      return c->get_name() == args[0];
    });
    if (!known) {
      std::cerr << "dogpile: " << unknown_command(app, args[0])
                << "\nRun 'dogpile --help' for the list of commands.\n";
      return cli::kExitUsage;
    }
  }

  try {
    std::reverse(args.begin(), args.end());  // CLI11 takes them last first
    app.parse(args);
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
    std::cerr << "dogpile: " << error_text(e) << "\n";
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
