// memoize: cache a function's results by its arguments (dogpile.cache's
// cache_on_arguments and cache_multi_on_arguments).
//
//   auto load_user = dogpile::memoize(region, "load_user",
//       [](std::int64_t id, const std::string& shard) { return fetch_user(id, shard); },
//       {.key_namespace = "v2", .expiration_time = std::chrono::minutes(5)});
//   User u = load_user(42, "eu");     // get_or_create under key(42, "eu")
//   load_user.invalidate(42, "eu");   // erase; .set(value, args...), .get(args...),
//                                     // .refresh(args...), .original(), .key(args...)
//
//   auto load_users = dogpile::memoize_multi(region, "load_user",
//       [](std::span<const std::int64_t> ids) { return fetch_users(ids); });
//   std::vector<User> us = load_users({1, 2, 3});  // fetches only the missing ids
//
// The wrapper's parameters are those of the wrapped function, deduced from a
// function pointer or a callable with one non-template operator(); give the
// signature explicitly for anything else: memoize<User(std::int64_t)>(...).
// Arguments are converted to those parameter types before they are keyed, so
// 3 and 3L are one key for an int64_t parameter. The result type (decayed)
// must be registered with DOGPILE_REGISTER_TYPE.
//
// Key encoding (the default key generator). A key is
//     <name> '|' <key_namespace> '|' <token> (' ' <token>)*
// with one token per argument. Name and namespace may not contain '|', so
// they end at the first and second '|'. Every token is
//     <marker> <payload length in decimal> ':' <payload>
// so it ends where its length says, whatever bytes the payload holds, and no
// two different argument lists share a key: f("a b") is `s3:a b` while
// f("a", "b") is `s1:a s1:b`; f(1) is `i1:1` and f("1") is `s1:1`; f(1, 2)
// is `i1:1 i1:2` and f(12) is `i2:12`. Markers and payloads:
//     n  nullopt, an empty optional, nullptr, monostate  (empty payload)
//     b  bool: 0 or 1               c  char: the byte itself
//     w  char8/16/32_t, wchar_t: the code in decimal
//     i  any other integer, signed or unsigned: its value in decimal
//     e  an enum: its underlying value in decimal
//     f  a float, double or long double that a double holds exactly: the
//        shortest text that reads back as that double (std::to_chars)
//     F  a long double that no double holds: its shortest round-trip text
//     s  std::string, std::string_view, const char*, char arrays (up to the
//        first NUL), std::filesystem::path (its native string): the bytes
//     o  an engaged optional: the token of its value
//     v  a variant: the token of its index (i), then that of its value
//     l  a range (vector, array, span, set, map, ...): its elements' tokens
//     t  a pair or tuple: its elements' tokens
//     x  a user type: what its dogpile_key_append or KeyEncoder appended
//        (no type name: two user types keying alike share keys)
// Keys depend on values and their kind, never on addresses or std::hash, so
// they are the same in every process, run and build. A type without an
// encoding is a compile error naming the ways to give it one: an ADL function
// `void dogpile_key_append(std::string& out, const T&)` in T's namespace, or a
// specialisation of dogpile::KeyEncoder<T> with `static void append(std::string&
// out, const T&)`; either usually calls dogpile::append_key for each field.
// Unordered containers are refused: equal ones may iterate in different orders.
// Functions given one name and namespace share entries where their argument
// lists encode alike; a multi function's key for `a` is the key of a
// one-argument call with `a`.
//
// Thread safety: a Memoized or MemoizedMulti may be called from any number of
// threads at once if its function may; it refers to its Region, which must
// outlive it.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "dogpile/error.h"
#include "dogpile/options.h"
#include "dogpile/region.h"
#include "dogpile/status.h"

namespace dogpile {

// Specialise to give a type T a key encoding where an ADL function cannot be
// added (a third-party namespace): `static void append(std::string& out, const T&)`.
template <class T>
struct KeyEncoder;

template <class T>
void append_key(std::string& out, const T& value);

namespace memoize_detail {

template <class T>
inline constexpr bool kAlwaysFalse = false;

template <class T>
concept HasKeyEncoder = requires(std::string& out, const T& v) { KeyEncoder<T>::append(out, v); };

// Unqualified on purpose: found by argument-dependent lookup in T's namespace.
template <class T>
concept HasKeyHook = requires(std::string& out, const T& v) { dogpile_key_append(out, v); };

template <class T>
inline constexpr bool kIsOptional = false;
template <class T>
inline constexpr bool kIsOptional<std::optional<T>> = true;

template <class T>
inline constexpr bool kIsVariant = false;
template <class... Ts>
inline constexpr bool kIsVariant<std::variant<Ts...>> = true;

template <class T>
concept TupleLike = requires { std::tuple_size<T>::value; };

template <class T>
concept Unordered = requires { typename T::hasher; };

template <class T>
inline constexpr bool kIsWideChar =
    std::is_same_v<T, char8_t> || std::is_same_v<T, char16_t> || std::is_same_v<T, char32_t> ||
    std::is_same_v<T, wchar_t>;

inline void append_token(std::string& out, char marker, std::string_view payload) {
  out += marker;
  out += std::to_string(payload.size());
  out += ':';
  out += payload;
}

template <class I>
void append_integer(std::string& out, char marker, I value) {
  char buf[48];
  const auto res = std::to_chars(buf, buf + sizeof buf, value);
  append_token(out, marker, std::string_view(buf, static_cast<std::size_t>(res.ptr - buf)));
}

template <class F>
void append_floating(std::string& out, F value) {
  char buf[128];
  std::to_chars_result res;
  char marker = 'f';
  // Every float is a double; a long double usually is too, and then it keys
  // like the double of the same value.
  if constexpr (std::is_same_v<F, long double>) {
    // Narrowing a finite value beyond double's range is undefined: test first.
    const bool in_range = !std::isfinite(value) ||
                          std::fabs(value) <= std::numeric_limits<double>::max();
    if (in_range && (std::isnan(value) ||
                     static_cast<long double>(static_cast<double>(value)) == value)) {
      res = std::to_chars(buf, buf + sizeof buf, static_cast<double>(value));
    } else {
      marker = 'F';
      res = std::to_chars(buf, buf + sizeof buf, value);
    }
  } else {
    res = std::to_chars(buf, buf + sizeof buf, static_cast<double>(value));
  }
  append_token(out, marker, std::string_view(buf, static_cast<std::size_t>(res.ptr - buf)));
}

inline void append_c_string(std::string& out, const char* s) {
  if (s == nullptr) {
    throw Error(Status::error(StatusCode::kInvalidArgument,
                              "memoize: a null const char* argument has no key"));
  }
  append_token(out, 's', std::string_view(s));
}

// The key of one call under the default generator.
template <class... Args>
std::string default_key(std::string_view name, std::string_view key_namespace,
                        const Args&... args) {
  std::string key;
  key.reserve(name.size() + key_namespace.size() + 2 + 8 * sizeof...(Args));
  key += name;
  key += '|';
  key += key_namespace;
  key += '|';
  bool first = true;
  [[maybe_unused]] const auto one = [&](const auto& arg) {
    if (!first) key += ' ';
    first = false;
    append_key(key, arg);
  };
  (one(args), ...);
  return key;
}

inline void check_key_part(std::string_view what, std::string_view value) {
  if (value.find('|') != std::string_view::npos) {
    throw Error(Status::error(StatusCode::kInvalidArgument,
                              "memoize: the " + std::string(what) + " '" + std::string(value) +
                                  "' contains '|', which ends it in a key"));
  }
}

// The signature of a callable: R(Params...) as declared.
template <class F>
struct CallSignature {};
template <class R, class... A>
struct CallSignature<R(A...)> {
  using type = R(A...);
};
template <class R, class... A>
struct CallSignature<R(A...) noexcept> {
  using type = R(A...);
};
template <class R, class... A>
struct CallSignature<R (*)(A...)> {
  using type = R(A...);
};
template <class R, class... A>
struct CallSignature<R (*)(A...) noexcept> {
  using type = R(A...);
};
template <class R, class C, class... A>
struct CallSignature<R (C::*)(A...)> {
  using type = R(A...);
};
template <class R, class C, class... A>
struct CallSignature<R (C::*)(A...) const> {
  using type = R(A...);
};
template <class R, class C, class... A>
struct CallSignature<R (C::*)(A...) noexcept> {
  using type = R(A...);
};
template <class R, class C, class... A>
struct CallSignature<R (C::*)(A...) const noexcept> {
  using type = R(A...);
};

template <class Fn>
struct DeducedSignature : CallSignature<Fn> {};
template <class Fn>
  requires requires { &Fn::operator(); }
struct DeducedSignature<Fn> : CallSignature<decltype(&Fn::operator())> {};

template <class Fn>
concept Deducible = requires { typename DeducedSignature<Fn>::type; };

// R(Params...) with the result and the parameters decayed: the wrapper's view.
template <class Sig>
struct Normalize;
template <class R, class... A>
struct Normalize<R(A...)> {
  using type = std::remove_cvref_t<R>(std::remove_cvref_t<A>...);
};

// Element signature R(A) of a multi function std::vector<R>(vector<A> or span<A>).
template <class Sig>
struct MultiElement {
  static_assert(kAlwaysFalse<Sig>,
                "memoize_multi: the function must take one std::vector<A> or std::span<const A> "
                "and return std::vector<R>");
};
template <class R, class A>
struct MultiElement<std::vector<R>(std::vector<A>)> {
  using type = R(A);
};
template <class R, class A, std::size_t N>
struct MultiElement<std::vector<R>(std::span<A, N>)> {
  using type = R(std::remove_const_t<A>);
};

template <class Fn>
auto deduced_signature() {
  static_assert(Deducible<Fn>,
                "memoize: cannot deduce the parameters of this callable (a generic lambda, an "
                "overloaded or templated operator()); name them: memoize<R(Args...)>(...)");
  if constexpr (Deducible<Fn>) {
    return std::type_identity<typename Normalize<typename DeducedSignature<Fn>::type>::type>{};
  } else {
    return std::type_identity<void()>{};
  }
}

template <class Fn>
using SignatureOf = typename decltype(deduced_signature<Fn>())::type;

}  // namespace memoize_detail

// Appends the key token of `value` to `out` (see "Key encoding" above). For
// use in dogpile_key_append and KeyEncoder::append of user types.
template <class T>
void append_key(std::string& out, const T& value) {
  using namespace memoize_detail;
  if constexpr (HasKeyEncoder<T> || HasKeyHook<T>) {
    std::string payload;
    if constexpr (HasKeyEncoder<T>) {
      KeyEncoder<T>::append(payload, value);
    } else {
      dogpile_key_append(payload, value);
    }
    append_token(out, 'x', payload);
  } else if constexpr (std::is_same_v<T, bool>) {
    append_token(out, 'b', value ? "1" : "0");
  } else if constexpr (std::is_same_v<T, char>) {
    append_token(out, 'c', std::string_view(&value, 1));
  } else if constexpr (kIsWideChar<T>) {
    append_integer(out, 'w', static_cast<std::uint32_t>(value));
  } else if constexpr (std::is_integral_v<T>) {
    append_integer(out, 'i', value);
  } else if constexpr (std::is_enum_v<T>) {
    append_integer(out, 'e', static_cast<std::underlying_type_t<T>>(value));
  } else if constexpr (std::is_floating_point_v<T>) {
    append_floating(out, value);
  } else if constexpr (std::is_same_v<T, std::nullptr_t> || std::is_same_v<T, std::nullopt_t> ||
                       std::is_same_v<T, std::monostate>) {
    append_token(out, 'n', {});
  } else if constexpr (std::is_same_v<T, const char*> || std::is_same_v<T, char*>) {
    append_c_string(out, value);
  } else if constexpr (std::is_array_v<T> && std::is_same_v<std::remove_extent_t<T>, char>) {
    // A literal's terminating NUL is not part of the string.
    const char* end = std::find(value, value + std::extent_v<T>, '\0');
    append_token(out, 's', std::string_view(value, static_cast<std::size_t>(end - value)));
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    append_token(out, 's', std::string_view(value));
  } else if constexpr (kIsOptional<T>) {
    if (!value) {
      append_token(out, 'n', {});
    } else {
      std::string payload;
      append_key(payload, *value);
      append_token(out, 'o', payload);
    }
  } else if constexpr (kIsVariant<T>) {
    if (value.valueless_by_exception()) {
      throw Error(Status::error(StatusCode::kInvalidArgument,
                                "memoize: a valueless variant argument has no key"));
    }
    std::string payload;
    append_integer(payload, 'i', value.index());
    std::visit([&](const auto& alternative) { append_key(payload, alternative); }, value);
    append_token(out, 'v', payload);
  } else if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) {
    static_assert(kAlwaysFalse<T>,
                  "dogpile::append_key: pointer arguments have no key (an address differs "
                  "between processes); pass the value, or give the type a key encoding");
  } else if constexpr (Unordered<T>) {
    static_assert(kAlwaysFalse<T>,
                  "dogpile::append_key: unordered containers have no key (equal ones may "
                  "iterate in different orders); pass a sorted container");
  } else if constexpr (std::is_same_v<T, std::filesystem::path>) {
    // A path is a range of paths; keyed as a range it would never end.
    append_token(out, 's', value.native());
  } else if constexpr (std::ranges::input_range<const T>) {
    static_assert(!std::is_same_v<std::remove_cvref_t<std::ranges::range_value_t<const T>>, T>,
                  "dogpile::append_key: a range whose elements are the range's own type has no "
                  "key (its elements would be keyed for ever); give the type a key encoding");
    std::string payload;
    for (const auto& element : value) append_key(payload, element);
    append_token(out, 'l', payload);
  } else if constexpr (TupleLike<T>) {
    std::string payload;
    std::apply([&](const auto&... elements) { (append_key(payload, elements), ...); }, value);
    append_token(out, 't', payload);
  } else {
    static_assert(kAlwaysFalse<T>,
                  "dogpile::append_key: this argument type has no key encoding; define "
                  "`void dogpile_key_append(std::string& out, const T& value)` in T's "
                  "namespace, or specialise dogpile::KeyEncoder<T> (see dogpile/memoize.h)");
  }
}

// The default key of a call of the function `name` in `key_namespace`.
template <class... Args>
std::string memoize_key(std::string_view name, std::string_view key_namespace,
                        const Args&... args) {
  return memoize_detail::default_key(name, key_namespace, args...);
}

template <class Sig>
struct MemoizeOptions;

// Options of memoize and memoize_multi for a function R(Args...) (for
// memoize_multi, R and Args are one element's: R(A)).
template <class R, class... Args>
struct MemoizeOptions<R(Args...)> {
  // Keeps two functions of the same name apart (dogpile's `namespace`); part
  // of every key. May not contain '|'.
  // Default: "" (none).
  std::string key_namespace{};
  // Age after which a result is stale, for this function's calls; nullopt
  // keeps the region's.
  // Default: nullopt.
  std::optional<Duration> expiration_time{};
  // Called on every call for the expiration to use (dogpile's callable
  // expiration_time); when set it replaces expiration_time.
  // Default: none.
  std::function<std::optional<Duration>()> expiration_time_fn{};
  // Lifetime stored with each result (SetOptions::ttl).
  // Default: nullopt.
  std::optional<Duration> ttl{};
  // Whether a computed result is stored (dogpile's should_cache_fn); a
  // rejected result is still returned.
  // Default: none (every result is stored).
  std::function<bool(const R&)> should_cache{};
  // Replaces the default key of a call (dogpile's function_key_generator);
  // memoize_key and append_key help build one. The arguments still need a
  // key encoding: the default generator is compiled in either way.
  // Default: none (memoize_key(name, key_namespace, args...)).
  std::function<std::string(std::string_view name, std::string_view key_namespace,
                            const Args&... args)>
      key_generator{};
};

namespace memoize_detail {

// What the single and multi wrappers share: the region, name, options and
// the per-call options derived from them.
template <class R, class... Args>
class MemoizeBase {
  static_assert(RegisteredType<R>,
                "memoize: the function's result type must be registered with "
                "DOGPILE_REGISTER_TYPE");

 protected:
  MemoizeBase(Region& region, std::string name, MemoizeOptions<R(Args...)> options)
      : region_(&region),
        name_(std::move(name)),
        options_(std::move(options)),
        create_options_{.expiration_time = options_.expiration_time,
                        .ttl = options_.ttl,
                        .should_cache = options_.should_cache} {
    if (name_.empty()) {
      throw Error(Status::error(StatusCode::kInvalidArgument, "memoize: the name is empty"));
    }
    check_key_part("name", name_);
    check_key_part("namespace", options_.key_namespace);
  }

  std::string make_key(const Args&... args) const {
    if (options_.key_generator) {
      return options_.key_generator(name_, options_.key_namespace, args...);
    }
    return default_key(name_, options_.key_namespace, args...);
  }

  std::optional<Duration> expiration() const {
    return options_.expiration_time_fn ? options_.expiration_time_fn() : options_.expiration_time;
  }

  // The options of one get_or_create call: the prebuilt ones, or a copy in
  // `scratch` when expiration_time_fn has a say (saves copying should_cache).
  const CreateOptions<R>& create_options(CreateOptions<R>& scratch) const {
    if (!options_.expiration_time_fn) return create_options_;
    scratch = create_options_;
    scratch.expiration_time = options_.expiration_time_fn();
    return scratch;
  }

  GetOptions get_options() const { return GetOptions{.expiration_time = expiration()}; }
  SetOptions set_options() const { return SetOptions{.ttl = options_.ttl}; }

 public:
  const std::string& name() const noexcept { return name_; }
  const MemoizeOptions<R(Args...)>& options() const noexcept { return options_; }
  Region& region() const noexcept { return *region_; }

 protected:
  Region* region_;
  std::string name_;
  MemoizeOptions<R(Args...)> options_;
  CreateOptions<R> create_options_;
};

}  // namespace memoize_detail

template <class Sig, class Fn>
class Memoized;

// A function whose calls are cached in a Region by their arguments (dogpile's
// cache_on_arguments). Made by memoize().
template <class R, class... Args, class Fn>
class Memoized<R(Args...), Fn> : public memoize_detail::MemoizeBase<R, Args...> {
  static_assert(std::is_invocable_v<const Fn&, const Args&...>,
                "memoize: the function must be callable as const with its arguments as const "
                "lvalues (no mutable lambdas or non-const reference parameters)");
  static_assert(std::is_convertible_v<std::invoke_result_t<const Fn&, const Args&...>, R>,
                "memoize: the function's result must convert to the declared result type");

 public:
  using result_type = R;
  using options_type = MemoizeOptions<R(Args...)>;

  Memoized(Region& region, std::string name, Fn fn, options_type options = {})
      : memoize_detail::MemoizeBase<R, Args...>(region, std::move(name), std::move(options)),
        fn_(std::make_shared<const Fn>(std::move(fn))) {}

  // The cached result for these arguments, computed under the dogpile lock
  // when missing or stale (Region::get_or_create).
  R operator()(const Args&... args) const {
    CreateOptions<R> scratch;
    // The creator owns the function and a copy of the arguments: with an
    // AsyncRunner it may run after this call has returned (and after this
    // wrapper is gone), when the caller's arguments no longer exist.
    return this->region_->template get_or_create<R>(
        this->make_key(args...),
        [fn = fn_, owned = std::tuple<Args...>(args...)]() -> R {
          return std::apply(*fn, owned);
        },
        this->create_options(scratch));
  }

  // The fresh cached result, without computing it; nullopt when there is none.
  std::optional<R> get(const Args&... args) const {
    return this->region_->template get<R>(this->make_key(args...), this->get_options());
  }

  // Stores `value` as the result for these arguments.
  void set(const R& value, const Args&... args) const {
    this->region_->template set<R>(this->make_key(args...), value, this->set_options());
  }

  // Forgets the result for these arguments.
  void invalidate(const Args&... args) const { this->region_->erase(this->make_key(args...)); }

  // Computes the result now, stores it whatever should_cache says and
  // returns it.
  R refresh(const Args&... args) const {
    R value = std::invoke(*fn_, args...);
    set(value, args...);
    return value;
  }

  // The key these arguments are cached under (before the region's key_mangler).
  std::string key(const Args&... args) const { return this->make_key(args...); }

  // The wrapped function.
  const Fn& original() const noexcept { return *fn_; }

 private:
  // Shared with the creators of pending background regenerations.
  std::shared_ptr<const Fn> fn_;
};

template <class Sig, class Fn>
class MemoizedMulti;

// A function of many arguments at once, one result per argument, cached per
// argument (dogpile's cache_multi_on_arguments): a call computes only the
// arguments whose results are missing or stale, in one call of the function.
// Made by memoize_multi().
template <class R, class A, class Fn>
class MemoizedMulti<R(A), Fn> : public memoize_detail::MemoizeBase<R, A> {
  static_assert(std::is_invocable_v<const Fn&, const std::vector<A>&>,
                "memoize_multi: the function must be callable as const with a "
                "const std::vector<A>& (or take std::span<const A>)");
  static_assert(std::is_convertible_v<std::invoke_result_t<const Fn&, const std::vector<A>&>,
                                      std::vector<R>>,
                "memoize_multi: the function must return std::vector<R>");

 public:
  using result_type = R;
  using argument_type = A;
  using options_type = MemoizeOptions<R(A)>;

  MemoizedMulti(Region& region, std::string name, Fn fn, options_type options = {})
      : memoize_detail::MemoizeBase<R, A>(region, std::move(name), std::move(options)),
        fn_(std::move(fn)) {}

  // One result per argument, in order. The function is called once, with the
  // arguments whose results are missing (each once), in the order given, and
  // must return as many results. Region::get_or_create_multi.
  std::vector<R> operator()(std::span<const A> args) const {
    const std::vector<std::string> ks = keys(args);
    std::unordered_map<std::string_view, std::size_t> first_index;
    first_index.reserve(ks.size());
    for (std::size_t i = 0; i < ks.size(); ++i) first_index.emplace(ks[i], i);
    const auto creator = [&](std::span<const std::string> missing) -> std::vector<R> {
      std::vector<A> missing_args;
      missing_args.reserve(missing.size());
      for (const std::string& k : missing) missing_args.push_back(args[first_index.at(k)]);
      return std::invoke(fn_, std::as_const(missing_args));
    };
    CreateOptions<R> scratch;
    return this->region_->template get_or_create_multi<R>(std::span<const std::string>(ks),
                                                          creator, this->create_options(scratch));
  }
  std::vector<R> operator()(std::initializer_list<A> args) const { return (*this)(as_span(args)); }

  // The fresh cached results, nullopt where there is none; computes nothing.
  std::vector<std::optional<R>> get(std::span<const A> args) const {
    const std::vector<std::string> ks = keys(args);
    return this->region_->template get_multi<R>(std::span<const std::string>(ks),
                                                this->get_options());
  }
  std::vector<std::optional<R>> get(std::initializer_list<A> args) const {
    return get(as_span(args));
  }

  // Stores each value as the result for its argument (dogpile's set(mapping)).
  void set(std::span<const std::pair<A, R>> items) const {
    std::vector<std::pair<std::string, R>> keyed;
    keyed.reserve(items.size());
    for (const auto& [arg, value] : items) keyed.emplace_back(this->make_key(arg), value);
    this->region_->template set_multi<R>(std::span<const std::pair<std::string, R>>(keyed),
                                         this->set_options());
  }
  void set(std::initializer_list<std::pair<A, R>> items) const { set(as_span(items)); }

  // Forgets the results for these arguments.
  void invalidate(std::span<const A> args) const {
    const std::vector<std::string> ks = keys(args);
    this->region_->erase_multi(std::span<const std::string>(ks));
  }
  void invalidate(std::initializer_list<A> args) const { invalidate(as_span(args)); }

  // Computes every result now in one call, stores them all whatever
  // should_cache says and returns them.
  std::vector<R> refresh(std::span<const A> args) const {
    const std::vector<A> all(args.begin(), args.end());
    std::vector<R> values = std::invoke(fn_, all);
    if (values.size() != all.size()) {
      throw Error(Status::error(StatusCode::kInvalidArgument,
                                "memoize_multi: " + this->name_ + " returned " +
                                    std::to_string(values.size()) + " values for " +
                                    std::to_string(all.size()) + " arguments"));
    }
    std::vector<std::pair<std::string, R>> keyed;
    keyed.reserve(all.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
      keyed.emplace_back(this->make_key(all[i]), values[i]);
    }
    this->region_->template set_multi<R>(std::span<const std::pair<std::string, R>>(keyed),
                                         this->set_options());
    return values;
  }
  std::vector<R> refresh(std::initializer_list<A> args) const { return refresh(as_span(args)); }

  // The key one argument is cached under; the same as memoize's for a
  // one-argument function of the same name and namespace.
  std::string key(const A& arg) const { return this->make_key(arg); }
  std::vector<std::string> keys(std::span<const A> args) const {
    std::vector<std::string> out;
    out.reserve(args.size());
    for (const A& arg : args) out.push_back(this->make_key(arg));
    return out;
  }
  std::vector<std::string> keys(std::initializer_list<A> args) const { return keys(as_span(args)); }

  // The wrapped function.
  const Fn& original() const noexcept { return fn_; }

 private:
  template <class T>
  static std::span<const T> as_span(std::initializer_list<T> list) {
    return std::span<const T>(list.begin(), list.size());
  }

  Fn fn_;
};

// Wraps `fn` so its calls are cached in `region` under keys made from `name`
// (C++ has no portable function names), the namespace and the arguments.
// Throws Error (kInvalidArgument) for an empty name or a '|' in the name or
// namespace.
template <class Fn>
  requires(!std::is_function_v<Fn>)
Memoized<memoize_detail::SignatureOf<Fn>, Fn> memoize(
    Region& region, std::string name, Fn fn,
    MemoizeOptions<memoize_detail::SignatureOf<Fn>> options = {}) {
  return {region, std::move(name), std::move(fn), std::move(options)};
}

// As above with the signature given, for callables whose parameters cannot be
// deduced (generic lambdas, overloaded operator()).
template <class Sig, class Fn>
  requires std::is_function_v<Sig>
Memoized<typename memoize_detail::Normalize<Sig>::type, Fn> memoize(
    Region& region, std::string name, Fn fn,
    MemoizeOptions<typename memoize_detail::Normalize<Sig>::type> options = {}) {
  return {region, std::move(name), std::move(fn), std::move(options)};
}

// Wraps `fn`, taking std::vector<A> or std::span<const A> and returning
// std::vector<R> (one result per argument, in order), so each argument's
// result is cached on its own.
template <class Fn>
  requires(!std::is_function_v<Fn>)
MemoizedMulti<typename memoize_detail::MultiElement<memoize_detail::SignatureOf<Fn>>::type, Fn>
memoize_multi(Region& region, std::string name, Fn fn,
              MemoizeOptions<typename memoize_detail::MultiElement<
                  memoize_detail::SignatureOf<Fn>>::type>
                  options = {}) {
  return {region, std::move(name), std::move(fn), std::move(options)};
}

// As above with the signature given, e.g. memoize_multi<std::vector<R>(std::vector<A>)>.
template <class Sig, class Fn>
  requires std::is_function_v<Sig>
MemoizedMulti<typename memoize_detail::MultiElement<
                  typename memoize_detail::Normalize<Sig>::type>::type,
              Fn>
memoize_multi(Region& region, std::string name, Fn fn,
              MemoizeOptions<typename memoize_detail::MultiElement<
                  typename memoize_detail::Normalize<Sig>::type>::type>
                  options = {}) {
  return {region, std::move(name), std::move(fn), std::move(options)};
}

}  // namespace dogpile
