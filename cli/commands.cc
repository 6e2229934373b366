#include "commands.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "demo.h"
#include "dogpile/cache_dir.h"
#include "dogpile/config.h"
#include "dogpile/error.h"
#include "dogpile/store.h"
#include "dogpile/value_view.h"
#include "strf.h"

namespace dogpile::cli {
namespace {

// Progress bars appear only for caches this big; smaller ones finish before
// a bar would be worth reading.
constexpr std::uint64_t kProgressMinEntries = 5000;
constexpr auto kProgressRedraw = std::chrono::milliseconds(100);
constexpr std::size_t kProgressBarWidth = 30;
// Payload JSON nested deeper than this is shown as text rather than parsed.
constexpr int kMaxJsonDepth = 256;

constexpr const char* kDirHelp =
    "Cache directory (default: $DOGPILE_DIR, else $XDG_CACHE_HOME/dogpile, else "
    "~/.cache/dogpile)";
constexpr const char* kJsonHelp = "Print one JSON document on stdout instead of text";

// ---------------------------------------------------------------------------
// Text helpers


std::string u64(std::uint64_t n) { return std::to_string(n); }

// "1 entry", "2 entries".
std::string count(std::uint64_t n, const char* one, const char* many) {
  return u64(n) + " " + (n == 1 ? one : many);
}

// "512 B", "1.5 KiB", "1.0 GiB".
std::string human_bytes(std::uint64_t n) {
  if (n < 1024) return u64(n) + " B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(n) / 1024.0;
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  return strf("%.1f %s", value, kUnits[unit]);
}

// ISO 8601 in UTC: "2024-05-01T12:00:00Z", with nanoseconds when
// `fraction` is set and they are not zero.
std::string iso8601(std::int64_t ns, bool fraction) {
  constexpr std::int64_t kNsPerSecond = 1'000'000'000;
  std::int64_t seconds = ns / kNsPerSecond;
  std::int64_t rest = ns % kNsPerSecond;
  if (rest < 0) {  // floor, for times before 1970
    rest += kNsPerSecond;
    --seconds;
  }
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  if (::gmtime_r(&t, &tm) == nullptr) return strf("@%lld ns", static_cast<long long>(ns));
  std::string text = strf("%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                          tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (fraction && rest != 0) text += strf(".%09lld", static_cast<long long>(rest));
  return text + "Z";
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Length of the well-formed UTF-8 sequence at s[i] (overlong forms,
// surrogates and code points past U+10FFFF are not), 0 when there is none.
std::size_t utf8_sequence(std::string_view s, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  std::size_t length;
  char32_t min;
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  } else if ((b0 & 0xE0) == 0xC0) {
    length = 2;
    cp = b0 & 0x1F;
    min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    length = 3;
    cp = b0 & 0x0F;
    min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    length = 4;
    cp = b0 & 0x07;
    min = 0x10000;
  } else {
    return 0;
  }
  if (s.size() - i < length) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return length;
}

bool valid_utf8(std::string_view s) {
  char32_t cp;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool is_control(char32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp < 0xA0); }

// A key as it can be printed on one line: printable characters as they are,
// a backslash doubled, every other byte as \xNN.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  char32_t cp;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0 || is_control(cp)) {
      out += strf("\\x%02x", static_cast<unsigned char>(s[i]));
      ++i;
      continue;
    }
    if (cp == '\\') out += '\\';
    out.append(s.substr(i, n));
    i += n;
  }
  return out;
}

std::string in_quotes(std::string_view s) { return "\"" + printable(s) + "\""; }

// Whether bytes read well as text: UTF-8 with no control characters other
// than tab, newline and carriage return.
bool is_text(std::string_view s) {
  char32_t cp;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i, cp);
    if (n == 0) return false;
    if (is_control(cp) && cp != '\t' && cp != '\n' && cp != '\r') return false;
    i += n;
  }
  return true;
}

std::string to_hex(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() * 2);
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    out += kDigits[b >> 4];
    out += kDigits[b & 0xF];
  }
  return out;
}

std::string type_tag_hex(std::uint64_t tag) {
  return strf("0x%016llx", static_cast<unsigned long long>(tag));
}

// A type as people read it: its registered name when the library knows it,
// else its tag.
std::string type_text(std::uint64_t tag) {
  const std::string_view name = known_type_name(tag);
  return name.empty() ? type_tag_hex(tag) : std::string(name);
}

// The layout of `hexdump -C`: offset, 16 bytes in two groups of 8, the
// printable ASCII column; repeated lines collapse into "*"; the last line is
// the length. Written to std::cout in pieces, so a large payload is not
// held twice.
void hexdump(std::string_view data) {
  static constexpr char kDigits[] = "0123456789abcdef";
  constexpr std::size_t kFlushAt = std::size_t{64} << 10;
  std::string out;
  std::string_view previous;
  bool squeezed = false;
  for (std::size_t offset = 0; offset < data.size(); offset += 16) {
    const std::string_view line = data.substr(offset, 16);
    if (offset > 0 && line.size() == 16 && line == previous) {
      if (!squeezed) out += "*\n";
      squeezed = true;
      continue;
    }
    squeezed = false;
    previous = line;
    out += strf("%08zx  ", offset);
    for (std::size_t i = 0; i < 16; ++i) {
      if (i < line.size()) {
        const auto b = static_cast<unsigned char>(line[i]);
        out += kDigits[b >> 4];
        out += kDigits[b & 0xF];
        out += ' ';
      } else {
        out += "   ";
      }
      if (i == 7) out += ' ';
    }
    out += " |";
    for (const char c : line) out += (c >= 0x20 && c < 0x7F) ? c : '.';
    out += "|\n";
    if (out.size() >= kFlushAt) {
      std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
      out.clear();
    }
  }
  if (!data.empty()) out += strf("%08zx\n", data.size());
  std::cout.write(out.data(), static_cast<std::streamsize>(out.size()));
}

// Columns in terminal cells, counting each UTF-8 code point as one.
std::size_t columns(std::string_view s) {
  std::size_t n = 0;
  for (const char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Aligned columns, two spaces apart, no trailing blanks. A row with fewer
// cells than the header ends in a cell that spans the remaining columns.
class Table {
 public:
  // `align`: one 'l' or 'r' per column.
  Table(std::vector<std::string> header, std::string align)
      : align_(std::move(align)), widths_(header.size(), 0) {
    add(std::move(header));
  }

  void add(std::vector<std::string> row) {
    const bool spans = row.size() < widths_.size();
    for (std::size_t i = 0; i < row.size(); ++i) {
      if (spans && i + 1 == row.size()) break;
      widths_[i] = std::max(widths_[i], columns(row[i]));
    }
    rows_.push_back(std::move(row));
  }

  void print(std::string& out) const {
    for (const std::vector<std::string>& row : rows_) {
      const bool spans = row.size() < widths_.size();
      std::string line;
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (i > 0) line += "  ";
        const bool last = i + 1 == row.size();
        const std::size_t pad =
            (spans && last) ? 0 : widths_[i] - std::min(widths_[i], columns(row[i]));
        if (align_[i] == 'r') line.append(pad, ' ');
        line += row[i];
        if (align_[i] != 'r' && !last) line.append(pad, ' ');
      }
      while (!line.empty() && line.back() == ' ') line.pop_back();
      out += line;
      out += '\n';
    }
  }

 private:
  std::string align_;
  std::vector<std::size_t> widths_;
  std::vector<std::vector<std::string>> rows_;
};

// ---------------------------------------------------------------------------
// JSON: output documents, and re-indenting JSON payloads.

class Json {
 public:
  enum class Kind : std::uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };

  Json() = default;  // null
  static Json boolean(bool b) {
    Json j(Kind::kBool);
    j.bool_ = b;
    return j;
  }
  static Json number(std::uint64_t n) { return number_token(u64(n)); }
  // `token` must be a valid JSON number.
  static Json number_token(std::string token) {
    Json j(Kind::kNumber);
    j.text_ = std::move(token);
    return j;
  }
  static Json string(std::string s) {
    Json j(Kind::kString);
    j.text_ = std::move(s);
    return j;
  }
  static Json array() { return Json(Kind::kArray); }
  static Json object() { return Json(Kind::kObject); }

  // Appends a member (objects) or an element (arrays; the key is ignored).
  Json& set(std::string key, Json value) {
    keys_.push_back(std::move(key));
    items_.push_back(std::move(value));
    return *this;
  }
  Json& push(Json value) { return set({}, std::move(value)); }

  // Two-space indentation, one member or element per line (Python's
  // json.dumps(indent=2) layout).
  void dump(std::string& out, int depth = 0) const {
    switch (kind_) {
      case Kind::kNull:
        out += "null";
        return;
      case Kind::kBool:
        out += bool_ ? "true" : "false";
        return;
      case Kind::kNumber:
        out += text_;
        return;
      case Kind::kString:
        escape(text_, out);
        return;
      case Kind::kArray:
      case Kind::kObject:
        break;
    }
    const bool object = kind_ == Kind::kObject;
    if (items_.empty()) {
      out += object ? "{}" : "[]";
      return;
    }
    out += object ? '{' : '[';
    for (std::size_t i = 0; i < items_.size(); ++i) {
      out += i == 0 ? "\n" : ",\n";
      out.append(static_cast<std::size_t>(depth + 1) * 2, ' ');
      if (object) {
        escape(keys_[i], out);
        out += ": ";
      }
      items_[i].dump(out, depth + 1);
    }
    out += '\n';
    out.append(static_cast<std::size_t>(depth) * 2, ' ');
    out += object ? '}' : ']';
  }

  // A JSON string literal for UTF-8 `s`; bytes that are not UTF-8 become
  // U+FFFD, so the document stays valid.
  static void escape(std::string_view s, std::string& out) {
    out += '"';
    char32_t cp;
    for (std::size_t i = 0; i < s.size();) {
      const std::size_t n = utf8_sequence(s, i, cp);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
        continue;
      }
      switch (cp) {
        case '"':
          out += "\\\"";
          break;
        case '\\':
          out += "\\\\";
          break;
        case '\n':
          out += "\\n";
          break;
        case '\t':
          out += "\\t";
          break;
        case '\r':
          out += "\\r";
          break;
        case '\b':
          out += "\\b";
          break;
        case '\f':
          out += "\\f";
          break;
        default:
          if (cp < 0x20 || cp == 0x7F) {
            out += strf("\\u%04x", static_cast<unsigned>(cp));
          } else {
            out.append(s.substr(i, n));
          }
      }
      i += n;
    }
    out += '"';
  }

 private:
  explicit Json(Kind kind) : kind_(kind) {}

  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  std::string text_;  // a number's token, a string's bytes
  std::vector<std::string> keys_;
  std::vector<Json> items_;
};

// A strict RFC 8259 parser (numbers keep their text, so nothing is rounded).
class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : s_(text) {}

  // Whether the whole text is one JSON value.
  bool parse(Json& out) {
    skip_space();
    if (!value(out, 0)) return false;
    skip_space();
    return pos_ == s_.size();
  }

 private:
  bool value(Json& out, int depth) {
    if (depth > kMaxJsonDepth || pos_ >= s_.size()) return false;
    const char c = s_[pos_];
    if (c == '{' || c == '[') return container(out, depth, c == '{');
    if (c == '"') {
      std::string text;
      if (!string(text)) return false;
      out = Json::string(std::move(text));
      return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(out);
    for (const std::string_view word : {"true", "false", "null"}) {
      if (s_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        out = word == "null" ? Json() : Json::boolean(word == "true");
        return true;
      }
    }
    return false;
  }

  bool container(Json& out, int depth, bool object) {
    const char close = object ? '}' : ']';
    out = object ? Json::object() : Json::array();
    ++pos_;
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == close) {
      ++pos_;
      return true;
    }
    while (true) {
      std::string key;
      if (object) {
        if (pos_ >= s_.size() || s_[pos_] != '"' || !string(key)) return false;
        skip_space();
        if (pos_ >= s_.size() || s_[pos_] != ':') return false;
        ++pos_;
        skip_space();
      }
      Json item;
      if (!value(item, depth + 1)) return false;
      out.set(std::move(key), std::move(item));
      skip_space();
      if (pos_ >= s_.size()) return false;
      if (s_[pos_] == close) {
        ++pos_;
        return true;
      }
      if (s_[pos_] != ',') return false;
      ++pos_;
      skip_space();
    }
  }

  bool number(Json& out) {
    const std::size_t start = pos_;
    const auto digits = [&] {
      const std::size_t from = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (digits() == 0) {
      return false;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return false;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) return false;
    }
    out = Json::number_token(std::string(s_.substr(start, pos_ - start)));
    return true;
  }

  bool hex4(char32_t& out) {
    if (s_.size() - pos_ < 4) return false;
    out = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      out <<= 4;
      if (c >= '0' && c <= '9') {
        out |= static_cast<char32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        out |= static_cast<char32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        out |= static_cast<char32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    return true;
  }

  static void append_utf8(char32_t cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool string(std::string& out) {
    ++pos_;  // the opening quote
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) return false;
      const char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          char32_t cp;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(pos_, 2) == "\\u") {
            const std::size_t before = pos_;
            pos_ += 2;
            char32_t low;
            if (!hex4(low)) return false;
            if (low >= 0xDC00 && low <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              pos_ = before;  // not a pair: the high half stands alone
            }
          }
          // A lone surrogate has no UTF-8 form.
          append_utf8(cp >= 0xD800 && cp <= 0xDFFF ? 0xFFFD : cp, out);
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }

  void skip_space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

// A key for a JSON document: "key" always (exact when the key is UTF-8,
// else its printable form), and "key_hex" when the key is not UTF-8.
void set_key(Json& object, std::string_view key) {
  if (valid_utf8(key)) {
    object.set("key", Json::string(std::string(key)));
  } else {
    object.set("key", Json::string(printable(key)));
    object.set("key_hex", Json::string(to_hex(key)));
  }
}

// ---------------------------------------------------------------------------
// Output

void write_out(std::string_view text) {
  std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
}

void print_json(const Json& document) {
  std::string out;
  document.dump(out);
  out += '\n';
  write_out(out);
}

// Prints "dogpile: <message>" on stderr, after whatever stdout holds, and
// returns `code`.
int fail(int code, const std::string& message) {
  std::cout.flush();
  std::cerr << "dogpile: " << message << "\n";
  return code;
}

// What ^C, SIGTERM or SIGHUP must tidy before the process ends as the signal
// asks (it is raised again, so a shell sees 130 for ^C): a progress bar's
// line, and compact's partial copy. The handler only writes, unlinks, rmdirs
// and re-raises, all async-signal-safe; what it needs is prepared beforehand.
// Objects may nest (compact's names the staging directory, its bar's guards
// the line): they install the same handler and share its state. A signal
// the process was started ignoring (nohup's SIGHUP, SIGINT in a background
// job) stays ignored.
class OnInterrupt {
 public:
  // With `staging` (Store::compact_staging_path), the files compact writes
  // there and the directory itself are removed.
  explicit OnInterrupt(const std::string& staging = {}) : owns_staging_(!staging.empty()) {
    if (owns_staging_) {
      copy(staging + "/data.mdb", files_[0]);
      copy(staging + "/region-stamps", files_[1]);
      copy(staging, dir_);
    }
    struct sigaction action {};
    action.sa_handler = &on_signal;
    sigemptyset(&action.sa_mask);
    for (std::size_t i = 0; i < kSignals.size(); ++i) {
      ::sigaction(kSignals[i], nullptr, &previous_[i]);
      if (previous_[i].sa_handler != SIG_IGN) ::sigaction(kSignals[i], &action, nullptr);
    }
  }
  ~OnInterrupt() {
    for (std::size_t i = 0; i < kSignals.size(); ++i) {
      ::sigaction(kSignals[i], &previous_[i], nullptr);
    }
    if (owns_staging_) {
      for (Path& file : files_) file[0] = '\0';
      dir_[0] = '\0';
    }
  }
  OnInterrupt(const OnInterrupt&) = delete;
  OnInterrupt& operator=(const OnInterrupt&) = delete;

  // The bar on stderr's line is `columns` wide now; 0 once it is blank.
  static void line_drawn(std::size_t columns) noexcept {
    line_columns_.store(std::min(columns, kBlank.size() - 1));
  }
  // Spaces over the bar between carriage returns: unlike an erase-line
  // escape, every terminal that can show the bar understands them.
  static void blank_line() noexcept {
    const std::size_t columns = line_columns_.load();
    if (columns == 0) return;
    // A failed write leaves nothing to tidy: stderr is gone.
    if (::write(STDERR_FILENO, kBlank.data(), columns + 1) >= 0) {
      [[maybe_unused]] const ssize_t ignored = ::write(STDERR_FILENO, "\r", 1);
    }
  }

 private:
  static constexpr std::array<int, 3> kSignals = {SIGINT, SIGTERM, SIGHUP};
  using Path = std::array<char, 4096>;
  // '\r' and the most spaces a line may need.
  static constexpr auto kBlank = [] {
    std::array<char, 256> blank{};
    blank.fill(' ');
    blank[0] = '\r';
    return blank;
  }();

  static void copy(const std::string& from, Path& to) {
    const std::size_t n = std::min(from.size(), to.size() - 1);
    from.copy(to.data(), n);
    to[n] = '\0';
  }
  static void on_signal(int sig) {
    blank_line();
    for (const Path& file : files_) {
      if (file[0] != '\0') ::unlink(file.data());
    }
    if (dir_[0] != '\0') ::rmdir(dir_.data());
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }

  static_assert(std::atomic<std::size_t>::is_always_lock_free, "read by a signal handler");
  static inline std::atomic<std::size_t> line_columns_{0};
  static inline std::array<Path, 2> files_{};
  static inline Path dir_{};
  bool owns_staging_;
  std::array<struct sigaction, kSignals.size()> previous_{};
};

// Whether stderr is a terminal that can redraw a line: not a pipe or a file,
// and not one that says it cannot (TERM=dumb, as editors' shells set, or no
// TERM at all).
bool can_redraw_stderr() {
  if (::isatty(STDERR_FILENO) != 1) return false;
  const char* term = std::getenv("TERM");
  return term != nullptr && *term != '\0' && std::string_view(term) != "dumb";
}

// A one-line bar on stderr, for work over a whole cache that may take a
// while: drawn only when stderr can redraw a line (can_redraw_stderr) and
// the cache holds more than kProgressMinEntries entries, blanked when the
// work ends or a signal ends the process.
class ProgressBar {
 public:
  enum class Unit { kItems, kBytes };

  // `label` starts the line. Counts the store's entries only when stderr can
  // show a bar, since nothing is drawn otherwise.
  ProgressBar(Store& store, std::string label, Unit unit)
      : label_(std::move(label)),
        unit_(unit),
        enabled_(can_redraw_stderr() && store.stats().total.entries > kProgressMinEntries) {
    if (enabled_) on_interrupt_.emplace();
  }
  ~ProgressBar() {
    if (!drawn_) return;
    OnInterrupt::blank_line();
    OnInterrupt::line_drawn(0);
  }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // The Store's progress callback, drawing on this bar.
  Progress progress() {
    return [this](std::uint64_t done, std::uint64_t total) { update(done, total); };
  }

  void update(std::uint64_t done, std::uint64_t total) {
    if (!enabled_ || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    if (drawn_ && done < total && now - last_draw_ < kProgressRedraw) return;
    last_draw_ = now;
    done = std::min(done, total);
    const std::size_t filled = static_cast<std::size_t>(
        static_cast<double>(done) / static_cast<double>(total) * kProgressBarWidth);
    const auto amount = [&](std::uint64_t n) {
      return unit_ == Unit::kBytes ? human_bytes(n) : u64(n);
    };
    std::string line = label_ + " [" + std::string(filled, '#') +
                       std::string(kProgressBarWidth - filled, '-') + "] " +
                       strf("%3d%%", static_cast<int>(done * 100 / total)) + " " + amount(done) +
                       "/" + amount(total);
    // Padded over a longer frame before it; the handler blanks the widest.
    width_ = std::max(width_, line.size());
    line.resize(width_, ' ');
    OnInterrupt::line_drawn(width_);
    drawn_ = true;
    std::cerr << ('\r' + line) << std::flush;
  }

 private:
  std::string label_;
  Unit unit_;
  bool enabled_;
  bool drawn_ = false;
  std::size_t width_ = 0;  // of the widest frame drawn
  std::chrono::steady_clock::time_point last_draw_;
  std::optional<OnInterrupt> on_interrupt_;  // while a bar may be drawn
};

// ---------------------------------------------------------------------------
// Shared options

}  // namespace

const CLI::Validator& not_empty() {
  static const CLI::Validator validator(
      [](const std::string& value) {
        return value.empty() ? std::string("must not be empty") : std::string();
      },
      "", "NOT-EMPTY");
  return validator;
}

const CLI::Validator& unsigned_number() {
  static const CLI::Validator validator(
      [](const std::string& value) -> std::string {
        const bool digits = !value.empty() && value.find_first_not_of("0123456789") ==
                                                  std::string::npos;
        if (!digits) return "'" + value + "' is not a whole number of 0 or more";
        // 2^64 - 1 has 20 digits; compare as text, leading zeros aside.
        const std::string_view n = std::string_view(value).substr(
            std::min(value.find_first_not_of('0'), value.size() - 1));
        constexpr std::string_view kMax = "18446744073709551615";
        if (n.size() > kMax.size() || (n.size() == kMax.size() && n > kMax)) {
          return "'" + value + "' is too large";
        }
        return std::string();
      },
      "", "NUMBER");
  return validator;
}

const CLI::Validator& positive_duration() {
  static const CLI::Validator validator(
      [](const std::string& text) -> std::string {
        Duration d{};
        if (Status s = parse_duration(text, d); !s) return s.message();
        if (d.count() <= 0) return "must be longer than 0: '" + text + "'";
        return {};
      },
      "", "DURATION");
  return validator;
}

namespace {

struct CommonArgs {
  std::string dir;    // empty: default_cache_dir()
  bool json = false;  // one JSON document instead of text
};

void add_common_options(CLI::App& command, CommonArgs& options) {
  command.add_option("--dir", options.dir, kDirHelp)->type_name("DIR")->check(not_empty());
  command.add_flag("--json", options.json, kJsonHelp);
}

// Registers `name`; its options go in a T (derived from CommonArgs) that
// lives as long as the parsed command, and its work is body(T).
template <class T, class Body>
CLI::App* add_command(CLI::App& app, std::function<int()>& run, const char* name,
                      const char* description, const char* footer, std::shared_ptr<T> options,
                      Body body) {
  CLI::App* command = app.add_subcommand(name, description);
  add_common_options(*command, *options);
  command->footer(footer);
  command->callback([&run, options, body] { run = [options, body] { return body(*options); }; });
  return command;
}

Store open_store(const CommonArgs& options) {
  StoreOptions store_options;
  store_options.path = options.dir;
  if (store_options.path.empty()) throw_if_error(default_cache_dir(store_options.path));
  store_options.must_exist = true;
  return Store::open(store_options);
}

bool has_region(Store& store, const std::string& region) {
  for (const std::string& name : store.regions()) {
    if (name == region) return true;
  }
  return false;
}

int no_region(Store& store, const std::string& region) {
  std::string known;
  for (const std::string& name : store.regions()) {
    known += (known.empty() ? "" : ", ") + in_quotes(name);
  }
  return fail(kExitNotFound, "no region " + in_quotes(region) + " in " + store.path() +
                                 (known.empty() ? " (it has no regions)" : " (regions: " + known + ")"));
}

int no_entry(Store& store, std::string_view region, std::string_view key) {
  return fail(kExitNotFound, "no entry for key " + in_quotes(key) + " in region " +
                                 in_quotes(region) + " of " + store.path());
}

// A stamp or sequence number (signed in the store, never negative there).
Json stamp_json(std::int64_t stamp) {
  return stamp == 0 ? Json() : Json::number_token(std::to_string(stamp));
}

// "hard", "soft", or empty when the entry was not invalidated.
std::string_view invalidated_name(Invalidated how) {
  switch (how) {
    case Invalidated::kHard: return "hard";
    case Invalidated::kSoft: return "soft";
    case Invalidated::kNo: break;
  }
  return {};
}

Json optional_string(const std::string& s) { return s.empty() ? Json() : Json::string(s); }

Json invalidated_json(Invalidated how) {
  const std::string_view name = invalidated_name(how);
  return name.empty() ? Json() : Json::string(std::string(name));
}

std::string expires_text(const EnvelopeMeta& meta, bool fraction) {
  if (!meta.expires_at_ns) return fraction ? "never" : "-";
  return iso8601(*meta.expires_at_ns, fraction);
}

// ---------------------------------------------------------------------------
// stats

std::optional<double> hit_ratio(const UsageCounters& c) {
  const std::uint64_t lookups = c.hits + c.misses;
  if (lookups == 0) return std::nullopt;
  return static_cast<double>(c.hits) / static_cast<double>(lookups);
}

// A ratio as a JSON number with at most four decimals: 0.8333, 0.25, 1.
std::string ratio_token(double ratio) {
  std::string token = strf("%.4f", ratio);
  while (token.back() == '0') token.pop_back();
  if (token.back() == '.') token.pop_back();
  return token;
}

// The usage counters' fields, set on `j` in the order stats prints them.
void set_counters(Json& j, const UsageCounters& c) {
  j.set("hits", Json::number(c.hits));
  j.set("misses", Json::number(c.misses));
  const std::optional<double> ratio = hit_ratio(c);
  j.set("hit_ratio", ratio ? Json::number_token(ratio_token(*ratio)) : Json());
  j.set("stale_served", Json::number(c.stale_served));
  j.set("creations", Json::number(c.creations));
  j.set("evictions", Json::number(c.evictions));
  j.set("expired_purged", Json::number(c.expired_purged));
  j.set("corruptions", Json::number(c.corruptions));
  j.set("mismatches", Json::number(c.mismatches));
}

Json usage_json(const RegionUsage& usage) {
  Json j = Json::object();
  j.set("name", Json::string(usage.name));
  j.set("entries", Json::number(usage.entries));
  j.set("bytes", Json::number(usage.bytes));
  set_counters(j, usage.counters);
  j.set("hard_stamp", stamp_json(usage.hard_stamp));
  j.set("soft_stamp", stamp_json(usage.soft_stamp));
  return j;
}

// A table whose columns are `first` (aligned as `align` says) and then the
// usage counters', aligned right.
Table counters_table(std::vector<std::string> first, std::string align) {
  for (const char* column : {"hits", "misses", "hit%", "stale", "creations", "evictions",
                             "purged", "corruptions", "mismatches"}) {
    first.emplace_back(column);
    align += 'r';
  }
  return Table(std::move(first), std::move(align));
}

// `first` and then the cells of the usage counters' columns.
std::vector<std::string> counters_row(std::vector<std::string> first, const UsageCounters& c) {
  const std::optional<double> ratio = hit_ratio(c);
  for (std::string cell :
       {u64(c.hits), u64(c.misses), ratio ? strf("%.1f%%", *ratio * 100) : "-",
        u64(c.stale_served), u64(c.creations), u64(c.evictions), u64(c.expired_purged),
        u64(c.corruptions), u64(c.mismatches)}) {
    first.push_back(std::move(cell));
  }
  return first;
}

std::vector<std::string> usage_row(const RegionUsage& usage) {
  return counters_row({printable(usage.name), u64(usage.entries), human_bytes(usage.bytes)},
                      usage.counters);
}

struct StatsArgs : CommonArgs {
  bool zero = false;
  std::string region;  // with zero: only this region
};

// stats --zero: resets the counters and prints what they had counted.
int run_zero(Store& store, const StatsArgs& options) {
  std::optional<std::string_view> region;
  if (!options.region.empty()) {
    if (!has_region(store, options.region)) return no_region(store, options.region);
    region = options.region;
  }
  const ZeroReport report = store.zero_stats(region);
  if (options.json) {
    Json doc = Json::object();
    doc.set("region", region ? Json::string(options.region) : Json());
    doc.set("regions", Json::number(report.regions));
    Json counters = Json::object();
    set_counters(counters, report.counters);
    doc.set("counters", std::move(counters));
    print_json(doc);
    return kExitOk;
  }
  std::string out = "zeroed the usage counters of " +
                    (region ? "region " + in_quotes(options.region)
                            : "every region (" + u64(report.regions) + " had counts)") +
                    "; they had counted:\n";
  Table table = counters_table({}, "");
  table.add(counters_row({}, report.counters));
  table.print(out);
  write_out(out);
  return kExitOk;
}

int run_stats(const StatsArgs& options) {
  Store store = open_store(options);
  if (options.zero) return run_zero(store, options);
  const StoreStats stats = store.stats();
  if (options.json) {
    Json doc = Json::object();
    doc.set("path", Json::string(stats.path));
    doc.set("map_size", Json::number(stats.map_size));
    doc.set("max_size", stats.max_size ? Json::number(*stats.max_size) : Json());
    doc.set("file_size", Json::number(stats.file_size));
    doc.set("page_size", Json::number(stats.page_size));
    doc.set("used_pages", Json::number(stats.used_pages));
    doc.set("free_pages", Json::number(stats.free_pages));
    doc.set("used_bytes", Json::number(stats.used_bytes));
    doc.set("free_bytes", Json::number(stats.free_bytes));
    doc.set("readers_used", Json::number(stats.readers_used));
    doc.set("max_readers", Json::number(stats.max_readers));
    Json regions = Json::array();
    for (const RegionUsage& usage : stats.regions) regions.push(usage_json(usage));
    doc.set("regions", std::move(regions));
    doc.set("total", usage_json(stats.total));
    print_json(doc);
    return kExitOk;
  }
  std::string out;
  Table summary({"cache", stats.path}, "ll");
  // The cache's own, as the programs using it recorded it; never this
  // command's default.
  summary.add({"max size", stats.max_size ? human_bytes(*stats.max_size) : "not recorded"});
  summary.add({"map", human_bytes(stats.map_size)});
  summary.add({"data file", human_bytes(stats.file_size)});
  summary.add({"used", human_bytes(stats.used_bytes) + " (" +
                           count(stats.used_pages, "page", "pages") + ")"});
  summary.add({"free", human_bytes(stats.free_bytes) + " (" +
                           count(stats.free_pages, "page", "pages") + ")"});
  summary.add({"readers", strf("%u of %u", stats.readers_used, stats.max_readers)});
  summary.print(out);
  out += "\n";
  Table table = counters_table({"region", "entries", "bytes"}, "lrr");
  for (const RegionUsage& usage : stats.regions) table.add(usage_row(usage));
  table.add(usage_row(stats.total));
  table.print(out);
  // Stamps are numbers of the directory's invalidation sequence; an entry
  // whose sequence is below one is invalidated (docs/format.md).
  for (const RegionUsage& usage : stats.regions) {
    if (usage.hard_stamp != 0) {
      out += "region " + in_quotes(usage.name) + " invalidated (hard) at stamp " +
             std::to_string(usage.hard_stamp) + "\n";
    }
    if (usage.soft_stamp != 0) {
      out += "region " + in_quotes(usage.name) + " invalidated (soft) at stamp " +
             std::to_string(usage.soft_stamp) + "\n";
    }
  }
  write_out(out);
  return kExitOk;
}

// ---------------------------------------------------------------------------
// ls

struct LsArgs : CommonArgs {
  std::string region;  // empty: every region
  std::string prefix;
  std::uint64_t limit = 0;
};

// What `ls` says of an entry beyond its header: a command result's command
// line, directory and exit status. Read only for types that have one.
std::string entry_summary(Store& store, const EntryInfo& info) {
  if (!info.valid || !has_summary(info.meta.type_tag)) return {};
  Entry entry;
  if (!store.get(info.region, info.key, entry) || !entry.info.valid) return {};
  return view_value(entry.info.meta, entry.payload).summary;
}

Json entry_info_json(const EntryInfo& info, const std::string& summary) {
  Json j = Json::object();
  j.set("region", Json::string(info.region));
  set_key(j, info.key);
  j.set("size", Json::number(info.size));
  j.set("valid", Json::boolean(info.valid));
  j.set("problem", info.valid ? Json() : Json::string(info.problem));
  if (info.valid) {
    j.set("created", Json::string(iso8601(info.meta.created_at_ns, true)));
    j.set("expires",
          info.meta.expires_at_ns ? Json::string(iso8601(*info.meta.expires_at_ns, true)) : Json());
    j.set("codec", Json::string(std::string(codec_name(info.meta.codec))));
    j.set("type", optional_string(std::string(known_type_name(info.meta.type_tag))));
    j.set("type_tag", Json::string(type_tag_hex(info.meta.type_tag)));
    j.set("schema_version", Json::number(info.meta.schema_version));
    j.set("payload_size", Json::number(info.payload_size));
    j.set("sequence", Json::number_token(std::to_string(info.meta.sequence)));
    j.set("invalidated", invalidated_json(info.invalidated));
  } else {
    for (const char* field : {"created", "expires", "codec", "type", "type_tag",
                              "schema_version", "payload_size", "sequence", "invalidated"}) {
      j.set(field, Json());
    }
  }
  j.set("summary", optional_string(summary));
  j.set("write_seq", Json::number(info.write_seq));
  return j;
}

int run_ls(const LsArgs& options) {
  Store store = open_store(options);
  ListOptions list;
  if (!options.region.empty()) {
    if (!has_region(store, options.region)) return no_region(store, options.region);
    list.region = options.region;
  }
  list.prefix = options.prefix;
  list.limit = options.limit;
  const std::vector<EntryInfo> entries = store.list(list);
  if (options.json) {
    Json array = Json::array();
    for (const EntryInfo& info : entries) {
      array.push(entry_info_json(info, entry_summary(store, info)));
    }
    Json doc = Json::object();
    doc.set("entries", std::move(array));
    print_json(doc);
    return kExitOk;
  }
  if (entries.empty()) return kExitOk;
  // The key goes last, as a file name in `ls -l`: keys vary most in length.
  Table table({"region", "size", "created", "expires", "codec", "type", "schema", "key"},
              "lrllllrl");
  for (const EntryInfo& info : entries) {
    if (!info.valid) {
      table.add({printable(info.region), u64(info.size), "-", "-", "-", "-", "-",
                 printable(info.key) + "  [corrupt: " + info.problem + "]"});
      continue;
    }
    const std::string_view invalidated = invalidated_name(info.invalidated);
    const std::string summary = entry_summary(store, info);
    table.add({printable(info.region), u64(info.size), iso8601(info.meta.created_at_ns, false),
               expires_text(info.meta, false), std::string(codec_name(info.meta.codec)),
               type_text(info.meta.type_tag), u64(info.meta.schema_version),
               printable(info.key) +
                   (summary.empty() ? std::string() : "  " + printable(summary)) +
                   (invalidated.empty() ? std::string()
                                        : "  [invalidated: " + std::string(invalidated) + "]")});
  }
  std::string out;
  table.print(out);
  write_out(out);
  return kExitOk;
}

// ---------------------------------------------------------------------------
// get

struct GetArgs : CommonArgs {
  std::string key;
  std::string region = "default";
  bool raw = false;  // the payload bytes only
};

enum class PayloadForm { kJson, kText, kHex };

// How a payload is shown: JSON-codec payloads re-indented, raw payloads as
// text when they read as text, everything else as bytes.
PayloadForm payload_form(const Entry& entry, Json& parsed) {
  const CodecId codec = entry.info.meta.codec;
  if (codec == CodecId::kJson && JsonParser(entry.payload).parse(parsed)) return PayloadForm::kJson;
  if ((codec == CodecId::kRaw || codec == CodecId::kJson) && is_text(entry.payload)) {
    return PayloadForm::kText;
  }
  return PayloadForm::kHex;
}

bool expired(const EnvelopeMeta& meta) {
  return meta.expires_at_ns && *meta.expires_at_ns <= now_ns();
}

// A decoded part's bytes as text when they read as text, else as hex.
Json part_json(const ValueView::Part& part) {
  Json j = Json::object();
  j.set("name", Json::string(part.name));
  const bool text = is_text(part.bytes);
  j.set("format", Json::string(text ? "text" : "hex"));
  j.set("data", Json::string(text ? part.bytes : to_hex(part.bytes)));
  return j;
}

// Writes a decoded part: text as it is (ending in a newline), other bytes
// as a hexdump; under a heading when the value has several parts.
void write_part(const ValueView::Part& part, bool heading) {
  if (heading) write_out("--- " + part.name + " (" + u64(part.bytes.size()) + " bytes)\n");
  if (part.bytes.empty()) return;
  if (is_text(part.bytes)) {
    write_out(part.bytes);
    if (part.bytes.back() != '\n') write_out("\n");
  } else {
    hexdump(part.bytes);
  }
}

int run_get(const GetArgs& options) {
  Store store = open_store(options);
  Entry entry;
  if (!store.get(options.region, options.key, entry)) {
    return no_entry(store, options.region, options.key);
  }
  const EntryInfo& info = entry.info;
  if (!info.valid) {
    return fail(kExitCacheError, "corrupt entry: key " + in_quotes(info.key) + " in region " +
                                     in_quotes(info.region) + " of " + store.path() + ": " +
                                     info.problem);
  }
  const ValueView view = view_value(info.meta, entry.payload);
  if (options.raw) {
    // The value's own bytes when the type is known (a string's contents, a
    // command's stdout), else the payload as stored.
    write_out(view.decoded && !view.parts.empty() ? view.parts.front().bytes : entry.payload);
    return kExitOk;
  }
  Json parsed;
  const PayloadForm form = payload_form(entry, parsed);
  const EnvelopeMeta& meta = info.meta;

  if (options.json) {
    Json doc = Json::object();
    doc.set("region", Json::string(info.region));
    set_key(doc, info.key);
    doc.set("size", Json::number(info.size));
    doc.set("payload_size", Json::number(info.payload_size));
    doc.set("created", Json::string(iso8601(meta.created_at_ns, true)));
    doc.set("expires",
            meta.expires_at_ns ? Json::string(iso8601(*meta.expires_at_ns, true)) : Json());
    doc.set("expired", Json::boolean(expired(meta)));
    doc.set("sequence", Json::number_token(std::to_string(meta.sequence)));
    doc.set("invalidated", invalidated_json(info.invalidated));
    doc.set("codec", Json::string(std::string(codec_name(meta.codec))));
    doc.set("type", optional_string(view.type_name));
    doc.set("type_tag", Json::string(type_tag_hex(meta.type_tag)));
    doc.set("schema_version", Json::number(meta.schema_version));
    doc.set("write_seq", Json::number(info.write_seq));
    switch (form) {
      case PayloadForm::kJson:
        doc.set("payload_format", Json::string("json"));
        doc.set("payload", std::move(parsed));
        break;
      case PayloadForm::kText:
        doc.set("payload_format", Json::string("text"));
        doc.set("payload", Json::string(entry.payload));
        break;
      case PayloadForm::kHex:
        doc.set("payload_format", Json::string("hex"));
        doc.set("payload", Json::string(to_hex(entry.payload)));
        break;
    }
    // The decoded value, for the types this tool knows; null otherwise.
    if (view.decoded) {
      Json fields = Json::object();
      for (const ValueView::Part& f : view.fields) fields.set(f.name, Json::string(f.bytes));
      doc.set("fields", std::move(fields));
      Json parts = Json::array();
      for (const ValueView::Part& p : view.parts) parts.push(part_json(p));
      doc.set("value", std::move(parts));
    } else {
      doc.set("fields", Json());
      doc.set("value", Json());
    }
    print_json(doc);
    return kExitOk;
  }

  std::string out;
  Table table({"region", printable(info.region)}, "ll");
  table.add({"key", printable(info.key)});
  table.add({"stored size", u64(info.size) + " bytes"});
  table.add({"created", iso8601(meta.created_at_ns, true)});
  table.add({"expires", expires_text(meta, true) + (expired(meta) ? " (expired)" : "")});
  {
    const std::string_view invalidated = invalidated_name(info.invalidated);
    table.add({"invalidated", invalidated.empty() ? std::string("no")
                                                  : std::string(invalidated) +
                                                        " (its region was invalidated after "
                                                        "it was made)"});
  }
  table.add({"codec", std::string(codec_name(meta.codec))});
  table.add({"type", view.type_name.empty()
                         ? type_tag_hex(meta.type_tag)
                         : view.type_name + " (" + type_tag_hex(meta.type_tag) + ")"});
  table.add({"schema version", u64(meta.schema_version)});
  table.add({"write sequence", u64(info.write_seq)});
  for (const ValueView::Part& f : view.fields) table.add({f.name, printable(f.bytes)});
  static constexpr const char* kFormNames[] = {"JSON, re-indented", "text", "hexdump"};
  table.add({"payload",
             u64(info.payload_size) + " bytes, shown " +
                 (view.decoded ? "decoded as " + view.type_name
                               : std::string("as ") + kFormNames[static_cast<int>(form)])});
  table.print(out);
  out += '\n';
  if (view.decoded) {
    write_out(out);
    for (const ValueView::Part& part : view.parts) write_part(part, view.parts.size() > 1);
    return kExitOk;
  }
  switch (form) {
    case PayloadForm::kJson:
      parsed.dump(out);
      out += '\n';
      write_out(out);
      break;
    case PayloadForm::kText:
      write_out(out);
      write_out(entry.payload);
      if (!entry.payload.empty() && entry.payload.back() != '\n') write_out("\n");
      break;
    case PayloadForm::kHex:
      write_out(out);
      hexdump(entry.payload);
      break;
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// rm, purge, clear, invalidate

struct KeyArgs : CommonArgs {
  std::string key;
  std::string region = "default";
};

int run_rm(const KeyArgs& options) {
  Store store = open_store(options);
  if (!store.erase(options.region, options.key)) {
    return no_entry(store, options.region, options.key);
  }
  if (options.json) {
    Json doc = Json::object();
    doc.set("region", Json::string(options.region));
    set_key(doc, options.key);
    doc.set("removed", Json::boolean(true));
    print_json(doc);
  } else {
    write_out("removed key " + in_quotes(options.key) + " from region " +
              in_quotes(options.region) + "\n");
  }
  return kExitOk;
}

struct PurgeArgs : CommonArgs {
  std::string older_than;  // a duration; empty: expired entries only
};

int run_purge(const PurgeArgs& options) {
  Store store = open_store(options);
  PurgeOptions purge;
  if (!options.older_than.empty()) {
    Duration older_than{};
    throw_if_error(parse_duration(options.older_than, older_than));  // checked by the validator
    purge.older_than = older_than;
  }
  PurgeReport report;
  {
    ProgressBar bar(store, "purge", ProgressBar::Unit::kItems);
    report = store.purge(purge, bar.progress());
  }
  if (options.json) {
    Json doc = Json::object();
    doc.set("removed", Json::number(report.removed));
    doc.set("scanned", Json::number(report.scanned));
    doc.set("removed_older", purge.older_than ? Json::number(report.removed_older) : Json());
    doc.set("examined", purge.older_than ? Json::number(report.examined) : Json());
    print_json(doc);
    return kExitOk;
  }
  std::string out = "removed " + count(report.removed, "expired entry", "expired entries") +
                    " (" + count(report.scanned, "expiry index entry", "expiry index entries") +
                    " looked at)\n";
  if (purge.older_than) {
    out += "removed " + count(report.removed_older, "entry", "entries") +
           " created more than " + options.older_than + " ago (" +
           count(report.examined, "entry", "entries") + " looked at)\n";
  }
  write_out(out);
  return kExitOk;
}

struct RegionArgs : CommonArgs {
  std::string region;  // clear: empty with `all`
  bool all = false;     // clear only: every region
  bool soft = false;    // invalidate only
  bool create = false;  // invalidate only: a region with no entries yet
};

int run_clear(const RegionArgs& options) {
  Store store = open_store(options);
  std::uint64_t removed;
  std::size_t regions = 0;
  if (options.region.empty()) {
    regions = store.regions().size();
    removed = store.clear();
  } else {
    if (!has_region(store, options.region)) return no_region(store, options.region);
    removed = store.clear(options.region);
  }
  if (options.json) {
    Json doc = Json::object();
    doc.set("region", options.region.empty() ? Json() : Json::string(options.region));
    doc.set("removed", Json::number(removed));
    print_json(doc);
  } else if (options.region.empty()) {
    write_out("removed " + count(removed, "entry", "entries") + " from " +
              (regions == 1 ? std::string("the only region") : "all " + u64(regions) + " regions") +
              "\n");
  } else {
    write_out("removed " + count(removed, "entry", "entries") + " from region " +
              in_quotes(options.region) + "\n");
  }
  return kExitOk;
}

int run_invalidate(const RegionArgs& options) {
  Store store = open_store(options);
  // A typo would otherwise invalidate a region nobody uses and leave the
  // meant one as it was.
  if (!options.create && !has_region(store, options.region)) {
    return no_region(store, options.region);
  }
  store.invalidate(options.region, !options.soft);
  if (options.json) {
    Json doc = Json::object();
    doc.set("region", Json::string(options.region));
    doc.set("mode", Json::string(options.soft ? "soft" : "hard"));
    print_json(doc);
  } else if (options.soft) {
    write_out("invalidated region " + in_quotes(options.region) +
              " (soft): entries written before now are stale; each is regenerated once, "
              "other callers get the old value meanwhile\n");
  } else {
    write_out("invalidated region " + in_quotes(options.region) +
              " (hard): entries written before now are missing for every process\n");
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// verify, compact

int run_verify(const CommonArgs& options) {
  Store store = open_store(options);
  VerifyReport report;
  {
    ProgressBar bar(store, "verify", ProgressBar::Unit::kItems);
    report = store.verify(bar.progress());
  }
  if (options.json) {
    Json doc = Json::object();
    doc.set("entries", Json::number(report.entries));
    doc.set("index_entries", Json::number(report.index_entries));
    doc.set("ok", Json::boolean(report.ok()));
    Json problems = Json::array();
    for (const VerifyProblem& p : report.problems) {
      Json j = Json::object();
      j.set("region", Json::string(p.region));
      set_key(j, p.key);
      j.set("problem", Json::string(p.what));
      problems.push(std::move(j));
    }
    doc.set("problems", std::move(problems));
    print_json(doc);
  } else {
    std::string out = "checked " + count(report.entries, "entry", "entries") + " and " +
                      count(report.index_entries, "index entry", "index entries") + ": ";
    if (report.ok()) {
      out += "no problems\n";
    } else {
      out += count(report.problems.size(), "problem", "problems") + "\n";
      Table table({"region", "key", "problem"}, "lll");
      for (const VerifyProblem& p : report.problems) {
        table.add({printable(p.region), printable(p.key), p.what});
      }
      table.print(out);
    }
    write_out(out);
  }
  if (report.ok()) return kExitOk;
  return fail(kExitCacheError, "verify found " +
                                   count(report.problems.size(), "problem", "problems") + " in " +
                                   store.path());
}

struct CompactArgs : CommonArgs {
  std::string dest;
};

std::optional<std::uint64_t> file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(st.st_size);
}

int run_compact(const CompactArgs& options) {
  Store store = open_store(options);
  {
    const OnInterrupt remove_partial_copy(Store::compact_staging_path(options.dest));
    ProgressBar bar(store, "compact", ProgressBar::Unit::kBytes);
    store.compact(options.dest, bar.progress());
  }
  const std::uint64_t before = file_size(store.path() + "/data.mdb").value_or(0);
  const std::uint64_t after = file_size(options.dest + "/data.mdb").value_or(0);
  if (options.json) {
    Json doc = Json::object();
    doc.set("source", Json::string(store.path()));
    doc.set("dest", Json::string(options.dest));
    doc.set("source_file_size", Json::number(before));
    doc.set("dest_file_size", Json::number(after));
    print_json(doc);
  } else {
    write_out("wrote a compacted copy of " + store.path() + " to " + options.dest + ": data.mdb " +
              human_bytes(after) + " (the original: " + human_bytes(before) + ")\n");
  }
  return kExitOk;
}

// ---------------------------------------------------------------------------
// demo

struct DemoArgs : CommonArgs {
  DemoOptions demo;
};

Json seconds(double s) { return Json::number_token(strf("%.3f", s)); }
Json microseconds(double us) { return Json::number_token(strf("%.2f", us)); }

int run_demo_command(const DemoArgs& options) {
  DemoOptions demo = options.demo;
  demo.dir = options.dir;
  if (!options.json) return run_demo(demo, std::cout);

  std::ostream discard(nullptr);  // the text report, not wanted here
  DemoReport report;
  const int code = run_demo(demo, discard, &report);
  Json doc = Json::object();
  doc.set("dir", Json::string(report.dir));
  doc.set("workers", Json::number(static_cast<std::uint64_t>(demo.workers)));
  doc.set("create_ms", Json::number(static_cast<std::uint64_t>(demo.create_ms)));
  doc.set("fresh", Json::boolean(demo.fresh));
  doc.set("present_before", Json::number(static_cast<std::uint64_t>(report.present_before)));
  Json keys = Json::array();
  for (const DemoKeyResult& k : report.keys) {
    Json j = Json::object();
    j.set("key", Json::string(k.key));
    j.set("present_before", Json::boolean(k.present_before));
    j.set("creations", Json::number(static_cast<std::uint64_t>(k.creations)));
    j.set("hits", Json::number(static_cast<std::uint64_t>(k.hits)));
    j.set("waits", Json::number(static_cast<std::uint64_t>(k.waits)));
    j.set("longest_call_us", microseconds(static_cast<double>(k.longest_call_ns) / 1e3));
    j.set("creator_time_saved_s", seconds(k.creator_time_saved_s));
    keys.push(std::move(j));
  }
  doc.set("keys", std::move(keys));
  Json total = Json::object();
  total.set("calls", Json::number(static_cast<std::uint64_t>(report.calls)));
  total.set("creations", Json::number(static_cast<std::uint64_t>(report.creations)));
  total.set("hits", Json::number(static_cast<std::uint64_t>(report.hits)));
  total.set("waits", Json::number(static_cast<std::uint64_t>(report.waits)));
  total.set("creator_time_saved_s", seconds(report.creator_time_saved_s));
  total.set("wall_s", seconds(report.wall_s));
  total.set("uncached_wall_s", seconds(report.uncached_wall_s));
  doc.set("total", std::move(total));
  Json codecs = Json::array();
  for (const DemoCodecResult& c : report.codecs) {
    Json j = Json::object();
    j.set("sample", Json::string(c.sample));
    j.set("codec", Json::string(c.codec));
    j.set("supported", Json::boolean(c.supported));
    if (c.supported) {
      j.set("payload_size", Json::number(c.payload_size));
      j.set("stored_size", Json::number(c.stored_size));
      j.set("encode_us", microseconds(c.encode_us));
      j.set("decode_us", microseconds(c.decode_us));
    } else {
      for (const char* field : {"payload_size", "stored_size", "encode_us", "decode_us"}) {
        j.set(field, Json());
      }
    }
    codecs.push(std::move(j));
  }
  doc.set("codecs", std::move(codecs));
  Json failures = Json::array();
  for (const std::string& failure : report.failures) failures.push(Json::string(failure));
  doc.set("failures", std::move(failures));
  print_json(doc);
  return code;
}

}  // namespace

// ---------------------------------------------------------------------------
// Registration

CLI::App* add_stats_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<StatsArgs>();
  CLI::App* command = add_command(
      app, run, "stats",
      "Entries, bytes and usage counters per region, with totals and the store's size",
      "Examples:\n"
      "  dogpile stats --dir /var/cache/myapp\n"
      "  dogpile stats --json | jq .total.hit_ratio\n"
      "  dogpile stats --zero --region users   # start counting afresh\n"
      "\nEvery read (get, get_or_create, each key of a multi call) counts once: a hit\n"
      "when it returned a fresh stored value (also one another process stored while\n"
      "it waited), a miss when it returned none (its creator ran, or it failed),\n"
      "stale when it returned a stale value. hit% = hits / (hits + misses).",
      options, run_stats);
  CLI::Option* zero = command->add_flag(
      "--zero", options->zero,
      "Reset the usage counters of every region (or of --region) to zero for every process, "
      "and print what they had counted");
  command->add_option("--region", options->region, "With --zero: only this region")
      ->type_name("REGION")
      ->check(not_empty())
      ->needs(zero);
  return command;
}

CLI::App* add_ls_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<LsArgs>();
  CLI::App* command =
      add_command(app, run, "ls",
                  "List entries: region, size, created, expires, codec, type, schema version, key",
                  "Examples:\n"
                  "  dogpile ls\n"
                  "  dogpile ls users --prefix user: --limit 20\n"
                  "  dogpile ls --json | jq -r '.entries[].key'",
                  options, run_ls);
  command->add_option("region", options->region, "Only this region (default: every region)")
      ->check(not_empty());
  command->add_option("--prefix", options->prefix, "Only keys that start with this")
      ->type_name("PREFIX");
  command->add_option("--limit", options->limit, "At most this many entries (0: no limit)")
      ->type_name("N")
      ->capture_default_str()
      ->check(unsigned_number());
  return command;
}

CLI::App* add_get_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<GetArgs>();
  CLI::App* command =
      add_command(app, run, "get", "Show one entry's metadata and payload",
                  "Examples:\n"
                  "  dogpile get user:42 --region users\n"
                  "  dogpile get report --raw > report.pdf\n"
                  "\nExit status 1 when there is no such entry, 3 when it is corrupt.",
                  options, run_get);
  command->add_option("key", options->key, "The key (after --, a key may start with -)")
      ->required()
      ->check(not_empty());
  command->add_option("--region", options->region, "Region of the key")
      ->type_name("REGION")
      ->capture_default_str()
      ->check(not_empty());
  command->add_flag("--raw", options->raw,
                    "Write only the value's bytes: a string's or byte vector's contents, a "
                    "command result's stdout, else the payload as stored")
      ->excludes(command->get_option("--json"));
  return command;
}

CLI::App* add_rm_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<KeyArgs>();
  CLI::App* command = add_command(app, run, "rm", "Remove one entry",
                                  "Example:\n"
                                  "  dogpile rm user:42 --region users\n"
                                  "\nExit status 1 when there is no such entry.",
                                  options, run_rm);
  command->add_option("key", options->key, "The key")->required()->check(not_empty());
  command->add_option("--region", options->region, "Region of the key")
      ->type_name("REGION")
      ->capture_default_str()
      ->check(not_empty());
  return command;
}

CLI::App* add_purge_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<PurgeArgs>();
  CLI::App* command =
      add_command(app, run, "purge",
                  "Remove every entry past its expiry time (and with --older-than, old ones)",
                  "Examples:\n"
                  "  dogpile purge --dir /var/cache/myapp\n"
                  "  dogpile purge --older-than 30d   # also whatever was made 30 days ago or "
                  "more",
                  options, run_purge);
  command
      ->add_option("--older-than", options->older_than,
                   "Also remove entries created more than this long ago (30s, 12h, 7d), "
                   "expired or not")
      ->type_name("DURATION")
      ->check(positive_duration());
  return command;
}

CLI::App* add_clear_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<RegionArgs>();
  CLI::App* command =
      add_command(app, run, "clear", "Remove every entry of one region, or of all regions",
                  "Examples:\n"
                  "  dogpile clear users    # one region\n"
                  "  dogpile clear --all    # every region",
                  options, run_clear);
  CLI::Option* region =
      command->add_option("region", options->region, "Only this region")->check(not_empty());
  CLI::Option* all = command->add_flag("--all", options->all, "Every region (instead of REGION)");
  region->excludes(all);
  // Clearing everything is never what an empty or forgotten argument meant.
  command->parse_complete_callback([options] {
    if (options->region.empty() && !options->all) {
      throw CLI::ValidationError("clear", "give a REGION, or --all to clear every region");
    }
  });
  return command;
}

CLI::App* add_invalidate_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<RegionArgs>();
  CLI::App* command = add_command(
      app, run, "invalidate",
      "Make a region's entries missing (or stale: --soft) for every process",
      "Examples:\n"
      "  dogpile invalidate users          # regenerate everything on next use\n"
      "  dogpile invalidate users --soft   # serve old values while each is regenerated",
      options, run_invalidate);
  command->add_option("region", options->region, "The region")->required()->check(not_empty());
  command->add_flag("--soft", options->soft,
                    "Make entries stale rather than missing (dogpile.cache's hard=False)");
  command->add_flag("--create", options->create,
                    "Invalidate a region that has no entries yet (else an unknown region is an "
                    "error)");
  return command;
}

CLI::App* add_verify_command(CLI::App& app, std::function<int()>& run) {
  return add_command(app, run, "verify", "Check every entry's checksum and every index entry",
                     "Example:\n"
                     "  dogpile verify || dogpile clear\n"
                     "\nExit status 3 when there are problems.",
                     std::make_shared<CommonArgs>(), run_verify);
}

CLI::App* add_compact_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<CompactArgs>();
  CLI::App* command =
      add_command(app, run, "compact", "Write a compacted copy of the cache into DEST (a backup)",
                  "Example:\n"
                  "  dogpile compact /backup/dogpile-$(date +%F)\n"
                  "\nDEST must not exist or be an empty directory.",
                  options, run_compact);
  command->add_option("dest", options->dest, "Directory for the copy")
      ->required()
      ->check(not_empty());
  return command;
}

CLI::App* add_demo_command(CLI::App& app, std::function<int()>& run) {
  auto options = std::make_shared<DemoArgs>();
  CLI::App* command = app.add_subcommand(
      "demo",
      "Fork processes that share one cache: each value is created once; codec sizes and "
      "speeds");
  add_common_options(*command, *options);
  command->add_option("--workers", options->demo.workers, "Worker processes")
      ->capture_default_str()
      ->check(unsigned_number())
      ->check(CLI::Range(1, 256));
  command->add_option("--keys", options->demo.keys, "Keys every worker asks for")
      ->capture_default_str()
      ->check(unsigned_number())
      ->check(CLI::Range(1, 100000));
  command->add_option("--create-ms", options->demo.create_ms, "Milliseconds one creator call takes")
      ->capture_default_str()
      ->check(unsigned_number())
      ->check(CLI::Range(0, 600000));
  command->add_flag("--fresh", options->demo.fresh, "Erase the demo's keys first");
  command->footer(
      "Example:\n"
      "  dogpile demo --fresh --dir /tmp/dogpile-demo\n"
      "\nExit status 1 when one of the demo's checks failed.");
  command->callback([&run, options] { run = [options] { return run_demo_command(*options); }; });
  return command;
}

}  // namespace dogpile::cli
