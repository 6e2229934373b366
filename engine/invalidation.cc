#include "dogpile/invalidation.h"

#include <atomic>
#include <cstdint>

#include "backends/stamp_file.h"

namespace dogpile {
namespace {

class LocalInvalidation final : public InvalidationStrategy {
 public:
  std::int64_t sequence() const noexcept override {
    return sequence_.load(std::memory_order_acquire);
  }
  Status invalidate(bool hard) override {
    const std::int64_t stamp = sequence_.fetch_add(1, std::memory_order_acq_rel) + 1;
    internal::raise_stamp(hard ? hard_ : soft_, stamp);
    return Status::ok();
  }
  bool is_hard_invalidated(std::int64_t sequence) const noexcept override {
    return internal::older_than(sequence, hard_.load(std::memory_order_acquire));
  }
  bool is_soft_invalidated(std::int64_t sequence) const noexcept override {
    return internal::older_than(sequence, soft_.load(std::memory_order_acquire));
  }
  bool was_hard_invalidated() const noexcept override {
    return hard_.load(std::memory_order_acquire) != 0;
  }
  bool was_soft_invalidated() const noexcept override {
    return soft_.load(std::memory_order_acquire) != 0;
  }

 private:
  std::atomic<std::int64_t> sequence_{internal::initial_sequence()};
  std::atomic<std::int64_t> hard_{0};  // a number drawn from sequence_; 0: never
  std::atomic<std::int64_t> soft_{0};
};

}  // namespace

std::shared_ptr<InvalidationStrategy> make_local_invalidation() {
  return std::make_shared<LocalInvalidation>();
}

}  // namespace dogpile
