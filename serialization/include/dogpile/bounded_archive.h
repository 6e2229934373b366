// Input archives for the binary and portable_binary codecs that are safe on
// any bytes; codec_impl.h uses them, nothing else should need to.
//
// cereal's own BinaryInputArchive and PortableBinaryInputArchive trust the
// stream: a container's size tag is handed to resize() before a single
// element is read, so eight corrupt bytes make them allocate up to 2^64
// elements, and a recursive type (a tree, a linked list through unique_ptr)
// recurses as deep as the bytes say, until the stack overflows. The archives
// here read the same bytes, byte for byte, and differ only where the bytes lie:
//
//   - they read from a span of memory and know how many bytes are left; a
//     size tag larger than that is refused before the caller sees it, since
//     every element cereal writes takes at least one byte (the one exception,
//     a container of more empty classes than bytes follow, is refused too);
//   - vectors, deques and lists grow as their elements are actually read,
//     instead of being resized to the stored count first (see
//     load_bounded_sequence), so what a load allocates follows what the
//     payload holds rather than what it claims;
//   - values nested deeper than kMaxArchiveDepth are refused (counted by
//     cereal's prologue/epilogue, which run around every value);
//   - a bool must be the byte 0 or 1, as cereal writes it: any other byte
//     would be an invalid bool object;
//   - a shared_ptr that refers back to an earlier one must name a pointer of
//     the same type; cereal would static_pointer_cast one type to another.
//
// A refusal throws cereal::Exception, which decode_payload turns into false.
// User types keep their cereal serialize/save/load templates; these archives
// are registered with cereal and map to cereal's matching output archives, so
// split save/load and load_minimal types work as they do with cereal's own.
//
// Thread safety: an archive is used by one thread at a time.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <cereal/archives/binary.hpp>
#include <cereal/archives/portable_binary.hpp>
#include <cereal/cereal.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/memory.hpp>
#include <cereal/types/vector.hpp>

namespace dogpile::detail {

// How deeply values may nest in a binary payload, counted in cereal's units:
// every value, name-value pair, container and pointer is one level, so each
// level of a tree whose nodes hold a named vector of nodes costs 3. Ordinary
// types stay far below; the limit keeps the stack a malformed payload can
// make the reader use to a few hundred KiB (about 40 bytes a level in an
// optimised build, 200 under AddressSanitizer).
inline constexpr std::size_t kMaxArchiveDepth = 1024;

// What the archives share: the bytes not yet read, the nesting depth, and
// the types of the shared pointers read so far.
class BoundedSource {
 public:
  explicit BoundedSource(std::string_view bytes) noexcept
      : pos_(bytes.data()), end_(bytes.data() + bytes.size()) {}

  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - pos_); }

  // Copies the next `size` bytes to `data`, or throws if fewer are left.
  void read(void* data, std::uint64_t size) {
    if (size > remaining()) throw cereal::Exception("dogpile: payload ends inside a value");
    if (size != 0) std::memcpy(data, pos_, static_cast<std::size_t>(size));
    pos_ += size;
  }

  // The next `size` bytes, not consumed, or throws if fewer are left.
  const char* peek(std::size_t size) const {
    if (size > remaining()) throw cereal::Exception("dogpile: payload ends inside a value");
    return pos_;
  }

  // A container of `count` elements needs at least `count` more bytes.
  void check_count(std::uint64_t count) const {
    if (count > remaining()) {
      throw cereal::Exception("dogpile: payload claims more elements than it has bytes");
    }
  }

  void enter() {
    if (++depth_ > kMaxArchiveDepth) throw cereal::Exception("dogpile: payload nested too deeply");
  }
  void leave() noexcept { --depth_; }

  // Shared pointer ids (without cereal's "first occurrence" bit) and the
  // type each was registered with.
  void note_pointer_type(std::uint32_t id, const std::type_info& type) {
    pointer_types_[id & ~cereal::detail::msb_32bit] = &type;
  }
  void check_pointer_type(std::uint32_t id, const std::type_info& type) const {
    if (id == 0) return;  // nullptr
    const auto it = pointer_types_.find(id);
    // An unknown id is left to cereal, which refuses it.
    if (it != pointer_types_.end() && *it->second != type) {
      throw cereal::Exception("dogpile: shared pointer refers to a value of another type");
    }
  }

 private:
  const char* pos_;
  const char* end_;
  std::size_t depth_ = 0;
  std::map<std::uint32_t, const std::type_info*> pointer_types_;
};

// Reads what cereal::BinaryOutputArchive writes.
class BoundedBinaryInputArchive final
    : public cereal::InputArchive<BoundedBinaryInputArchive, cereal::AllowEmptyClassElision>,
      public BoundedSource {
 public:
  explicit BoundedBinaryInputArchive(std::string_view bytes)
      : cereal::InputArchive<BoundedBinaryInputArchive, cereal::AllowEmptyClassElision>(this),
        BoundedSource(bytes) {}

  // `size` bytes of elements `element_size` bytes wide (host order: no swap).
  void load_elements(void* data, std::uint64_t size, std::size_t /*element_size*/) {
    read(data, size);
  }

  std::uint32_t peek_u32() const {
    std::uint32_t value;
    std::memcpy(&value, peek(sizeof(value)), sizeof(value));
    return value;
  }
};

// Reads what cereal::PortableBinaryOutputArchive writes: an endianness byte,
// then numbers in that byte order, swapped as they are read when it is not
// the host's. As cereal reads it, any first byte but 1 means big-endian.
class BoundedPortableBinaryInputArchive final
    : public cereal::InputArchive<BoundedPortableBinaryInputArchive,
                                  cereal::AllowEmptyClassElision>,
      public BoundedSource {
 public:
  explicit BoundedPortableBinaryInputArchive(std::string_view bytes)
      : cereal::InputArchive<BoundedPortableBinaryInputArchive, cereal::AllowEmptyClassElision>(
            this),
        BoundedSource(bytes) {
    std::uint8_t stream_little_endian = 0;
    read(&stream_little_endian, 1);
    swap_ = (kHostLittleEndian ^ stream_little_endian) != 0;
  }

  void load_elements(void* data, std::uint64_t size, std::size_t element_size) {
    read(data, size);
    if (swap_ && element_size > 1) {
      auto* bytes = static_cast<unsigned char*>(data);
      for (std::uint64_t i = 0; i + element_size <= size; i += element_size) {
        for (std::size_t a = 0, b = element_size - 1; a < b; ++a, --b) {
          const unsigned char t = bytes[i + a];
          bytes[i + a] = bytes[i + b];
          bytes[i + b] = t;
        }
      }
    }
  }

  std::uint32_t peek_u32() const {
    unsigned char bytes[sizeof(std::uint32_t)];
    std::memcpy(bytes, peek(sizeof(bytes)), sizeof(bytes));
    if (swap_) {
      std::swap(bytes[0], bytes[3]);
      std::swap(bytes[1], bytes[2]);
    }
    std::uint32_t value;
    std::memcpy(&value, bytes, sizeof(value));
    return value;
  }

 private:
  static constexpr std::uint8_t kHostLittleEndian =
      std::endian::native == std::endian::little ? 1 : 0;
  bool swap_ = false;
};

// What the functions below do, written once for both archives.
template <class Archive, class T>
void load_bounded_arithmetic(Archive& ar, T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    unsigned char byte = 0;
    ar.read(&byte, 1);
    if (byte > 1) throw cereal::Exception("dogpile: a bool that is neither 0 nor 1");
    value = byte != 0;
  } else {
    ar.load_elements(std::addressof(value), sizeof(value), sizeof(value));
  }
}

template <class Archive, class T>
void load_bounded_binary_data(Archive& ar, cereal::BinaryData<T>& data) {
  using Element = std::remove_cv_t<std::remove_pointer_t<std::remove_reference_t<T>>>;
  if constexpr (std::is_void_v<Element>) {
    ar.load_elements(data.data, data.size, 1);
  } else {
    ar.load_elements(data.data, data.size, sizeof(Element));
    if constexpr (std::is_same_v<Element, bool>) {
      const auto* bytes = static_cast<const unsigned char*>(data.data);
      for (std::uint64_t i = 0; i < data.size; ++i) {
        if (bytes[i] > 1) throw cereal::Exception("dogpile: a bool that is neither 0 nor 1");
      }
    }
  }
}

// Sequences (std::vector, std::deque, std::list) are read as cereal reads
// them, but are not resized to the stored count up front: that would cost
// the count times the element's in-memory size, which can be a hundred times
// the bytes the count was checked against. A vector of numbers is one block
// whose exact length is known; other sequences reserve at most a few times
// the bytes left and then grow as elements are actually read, so what they
// allocate follows what the payload really holds.
inline constexpr std::size_t kReserveBytesPerPayloadByte = 4;

template <class Archive, class Sequence>
void load_bounded_sequence(Archive& ar, Sequence& sequence) {
  using Element = typename Sequence::value_type;
  cereal::size_type count = 0;
  ar(cereal::make_size_tag(count));  // at most the bytes left
  if constexpr (std::is_arithmetic_v<Element> && !std::is_same_v<Element, bool> &&
                requires { sequence.data(); }) {
    if (count > ar.remaining() / sizeof(Element)) {
      throw cereal::Exception("dogpile: payload ends inside a value");
    }
    sequence.resize(static_cast<std::size_t>(count));
    ar(cereal::binary_data(sequence.data(), static_cast<std::size_t>(count) * sizeof(Element)));
  } else {
    sequence.clear();
    if constexpr (requires { sequence.reserve(std::size_t{}); }) {
      const std::size_t affordable =
          ar.remaining() * kReserveBytesPerPayloadByte / sizeof(Element) + 1;
      sequence.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(count, affordable)));
    }
    for (cereal::size_type i = 0; i < count; ++i) {
      sequence.emplace_back();
      ar(sequence.back());
    }
  }
}

template <class Archive, class T>
void load_bounded_shared_ptr(Archive& ar,
                             cereal::memory_detail::PtrWrapper<std::shared_ptr<T>&>& wrapper) {
  const std::uint32_t id = ar.peek_u32();
  if ((id & cereal::detail::msb_32bit) != 0) {
    ar.note_pointer_type(id, typeid(T));
  } else {
    ar.check_pointer_type(id, typeid(T));
  }
  // Qualified: cereal's overloads only, so this does not call itself.
  ::cereal::CEREAL_LOAD_FUNCTION_NAME(ar, wrapper);
}

// The functions cereal looks up (by argument-dependent lookup) for each
// archive. They name the archive type exactly: cereal's own prologue,
// epilogue and shared_ptr load are templates over any archive, and only an
// exact archive parameter makes these the better match.
//
//   prologue, epilogue: around every value; count the nesting depth.
//   load (arithmetic): numbers, chars, and bools (which must be 0 or 1).
//   load (BinaryData): blocks of numbers (strings, vectors, arrays).
//   serialize (NameValuePair): names are not written by binary archives.
//   serialize (SizeTag): a container's size, refused when there are not
//     that many bytes left.
//   load (vector, deque, list): see load_bounded_sequence; vector<bool>
//     stays with cereal (a bit per element, every one a byte of payload).
//   load (shared_ptr wrapper): cereal's own, after checking that a reference
//     to an earlier pointer names one of the same type; a first occurrence's
//     type is noted before its value is read, so references from inside it
//     are checked too.
#define DOGPILE_DETAIL_BOUNDED_ARCHIVE_FUNCTIONS(Archive)                                     \
  template <class T>                                                                         \
  void prologue(Archive& ar, const T& /*value*/) {                                           \
    ar.enter();                                                                              \
  }                                                                                          \
  template <class T>                                                                         \
  void epilogue(Archive& ar, const T& /*value*/) noexcept {                                  \
    ar.leave();                                                                              \
  }                                                                                          \
  template <class T>                                                                         \
  std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(Archive& ar, T& value) { \
    load_bounded_arithmetic(ar, value);                                                      \
  }                                                                                          \
  template <class T>                                                                         \
  void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, cereal::BinaryData<T>& data) {                 \
    load_bounded_binary_data(ar, data);                                                      \
  }                                                                                          \
  template <class T>                                                                         \
  void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& pair) {         \
    ar(pair.value);                                                                          \
  }                                                                                          \
  template <class T>                                                                         \
  void CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::SizeTag<T>& tag) {                \
    ar(tag.size);                                                                            \
    ar.check_count(static_cast<std::uint64_t>(tag.size));                                    \
  }                                                                                          \
  template <class T, class A>                                                                \
  std::enable_if_t<!std::is_same_v<T, bool>> CEREAL_LOAD_FUNCTION_NAME(                      \
      Archive& ar, std::vector<T, A>& sequence) {                                            \
    load_bounded_sequence(ar, sequence);                                                     \
  }                                                                                          \
  template <class T, class A>                                                                \
  void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, std::deque<T, A>& sequence) {                  \
    load_bounded_sequence(ar, sequence);                                                     \
  }                                                                                          \
  template <class T, class A>                                                                \
  void CEREAL_LOAD_FUNCTION_NAME(Archive& ar, std::list<T, A>& sequence) {                   \
    load_bounded_sequence(ar, sequence);                                                     \
  }                                                                                          \
  template <class T>                                                                         \
  void CEREAL_LOAD_FUNCTION_NAME(Archive& ar,                                                \
                                 cereal::memory_detail::PtrWrapper<std::shared_ptr<T>&>& w) { \
    load_bounded_shared_ptr(ar, w);                                                          \
  }

DOGPILE_DETAIL_BOUNDED_ARCHIVE_FUNCTIONS(BoundedBinaryInputArchive)
DOGPILE_DETAIL_BOUNDED_ARCHIVE_FUNCTIONS(BoundedPortableBinaryInputArchive)
#undef DOGPILE_DETAIL_BOUNDED_ARCHIVE_FUNCTIONS

}  // namespace dogpile::detail

CEREAL_REGISTER_ARCHIVE(dogpile::detail::BoundedBinaryInputArchive)
CEREAL_REGISTER_ARCHIVE(dogpile::detail::BoundedPortableBinaryInputArchive)

// Only the input-to-output direction: cereal's archives keep their own
// output-to-input mapping (CEREAL_SETUP_ARCHIVE_TRAITS would redefine it).
namespace cereal::traits::detail {
template <>
struct get_output_from_input<dogpile::detail::BoundedBinaryInputArchive> {
  using type = cereal::BinaryOutputArchive;
};
template <>
struct get_output_from_input<dogpile::detail::BoundedPortableBinaryInputArchive> {
  using type = cereal::PortableBinaryOutputArchive;
};
}  // namespace cereal::traits::detail
