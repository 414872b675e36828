use std::iter::Iterator;

use super::SeqNumber;

/// Iterator for compressing loss lists
pub struct CompressLossList<I> {
    /// Underlying iterator
    iterator: I,

    /// The next item
    next: Option<SeqNumber>,

    /// Some if looping
    last_in_loop: Option<SeqNumber>,
}

impl<I> Iterator for CompressLossList<I>
where
    I: Iterator<Item = SeqNumber>,
{
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        // if we're at the start, assign a next
        if self.next.is_none() {
            self.next = Some(self.iterator.next()?)
        }

        loop {
            // The state right here is
            // neither this nor next have been returned, and we need to figure out if this is
            // a) already in a loop and we continue on with that loop
            // b) already in a loop and need to break out
            // c) not in a loop and need to start one
            // d) not in a loop and doesn't need to start one

            let this = self.next?;
            match self.iterator.next() {
                Some(i) => self.next = Some(i),
                None => {
                    // invalidate next, so it None will be returned next time
                    self.next = None;

                    // return the one we have
                    return Some(this.as_raw());
                }
            };

            // the list must be sorted
            assert!(this < self.next?, "error: {}!<{}", this.0, self.next?.0);

            if let Some(last_in_loop) = self.last_in_loop {
                if last_in_loop + 2 == self.next? {
                    // continue with the loop
                    self.last_in_loop = Some(last_in_loop + 1);

                    continue;
                } else {
                    // break out of the loop
                    self.last_in_loop = None;

                    return Some(this.as_raw());
                }
            } else if this + 1 == self.next? {
                // create a loop
                self.last_in_loop = Some(this);

                // set the first bit to 1
                return Some(this.as_raw() | 1 << 31);
            } else {
                // no looping necessary
                return Some(this.as_raw());
            }
        }
    }
}

// keep in mind loss_list must be sorted
// takes in a list of u32, which is the loss list
pub fn compress_loss_list<I>(loss_list: I) -> CompressLossList<I>
where
    I: Iterator<Item = SeqNumber>,
{
    CompressLossList {
        iterator: loss_list,
        next: None,
        last_in_loop: None,
    }
}

/// The most sequence numbers one loss list expands to (Primacy patch). A
/// NAK packet names ranges; without a bound, one range spanning the
/// sequence space kept a connection task busy for billions of steps.
pub const MAX_DECOMPRESSED_LOSSES: usize = 1 << 16;

/// Sequence numbers are 31 bits.
const SEQ_MASK: u32 = 0x7FFF_FFFF;

pub struct DecompressLossList<I> {
    iterator: I,

    /// The next number of the range being expanded, and how many numbers
    /// of it are left (that one included).
    loop_next_left: Option<(u32, u32)>,

    /// Numbers this list may still yield.
    budget: usize,
}

impl<I: Iterator<Item = u32>> Iterator for DecompressLossList<I> {
    type Item = SeqNumber;

    // Primacy patch: ranges are expanded in the 31-bit sequence space (a
    // range across the wrap no longer counts through 2^32), a range of
    // 2^30 or more numbers (not a range of any real loss) yields its first
    // number only, an unterminated range (a start without an end) yields
    // its start instead of panicking, and the whole list yields at most
    // `MAX_DECOMPRESSED_LOSSES` numbers.
    fn next(&mut self) -> Option<SeqNumber> {
        if self.budget == 0 {
            return None;
        }
        let item = match self.loop_next_left {
            Some((next, left)) => {
                self.loop_next_left = (left > 1).then(|| ((next + 1) & SEQ_MASK, left - 1));
                next
            }
            None => {
                let next = self.iterator.next()?;
                if next & (1 << 31) != 0 {
                    let start = next & SEQ_MASK;
                    if let Some(end) = self.iterator.next() {
                        let after = (end & SEQ_MASK).wrapping_sub(start) & SEQ_MASK;
                        if after > 0 && after < 1 << 30 {
                            self.loop_next_left = Some(((start + 1) & SEQ_MASK, after));
                        }
                    }
                    start
                } else {
                    next
                }
            }
        };
        self.budget -= 1;
        Some(SeqNumber::new_truncate(item))
    }
}

pub fn decompress_loss_list<I: Iterator<Item = u32>>(loss_list: I) -> DecompressLossList<I> {
    DecompressLossList {
        iterator: loss_list,
        loop_next_left: None,
        budget: MAX_DECOMPRESSED_LOSSES,
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const ONE: u32 = 1 << 31;

    #[test]
    fn loss_compression_test() {
        macro_rules! test_comp_decomp {
            ($x:expr, $y:expr) => {{
                assert_eq!(
                    compress_loss_list($x.iter().cloned().map(SeqNumber::new_truncate))
                        .collect::<Vec<_>>(),
                    $y.iter().cloned().collect::<Vec<_>>(),
                    "Compressed wasn't same as given"
                );
                assert_eq!(
                    decompress_loss_list($y.iter().cloned()).collect::<Vec<_>>(),
                    $x.iter()
                        .cloned()
                        .map(SeqNumber::new_truncate)
                        .collect::<Vec<_>>(),
                    "Decompressed not same as given"
                );
            }};
        }

        test_comp_decomp!([13, 14, 15, 16, 17, 18, 19], [13 | ONE, 19]);

        test_comp_decomp!(
            [1, 2, 3, 4, 5, 9, 11, 12, 13, 16, 17],
            [1 | ONE, 5, 9, 11 | ONE, 13, 16 | ONE, 17]
        );

        test_comp_decomp!([15, 16], [15 | ONE, 16]);

        test_comp_decomp!(
            [1_687_761_238, 1_687_761_239],
            [1_687_761_238 | ONE, 1_687_761_239]
        );
    }

    #[test]
    #[should_panic(expected = "error: 10!<1")]
    fn invalid_ordering() {
        let _ = compress_loss_list([10, 1].iter().copied().map(SeqNumber::new_truncate))
            .collect::<Vec<_>>();
    }

    #[test]
    fn unterminated_loop_yields_its_start() {
        let got = decompress_loss_list([10 | ONE].iter().copied()).collect::<Vec<_>>();
        assert_eq!(got, vec![SeqNumber::new_truncate(10)]);
    }

    #[test]
    fn ranges_across_the_wrap_are_short() {
        let max = (1 << 31) - 1;
        let got = decompress_loss_list([(max - 1) | ONE, 1].iter().copied()).collect::<Vec<_>>();
        let want: Vec<SeqNumber> = [max - 1, max, 0, 1]
            .iter()
            .copied()
            .map(SeqNumber::new_truncate)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn hostile_ranges_are_bounded() {
        // Descending (as raw numbers): 2^31 - 251 numbers; not a loss range.
        let got = decompress_loss_list([0x100 | ONE, 5].iter().copied()).count();
        assert_eq!(got, 1);
        // Many large ranges: at most MAX_DECOMPRESSED_LOSSES numbers.
        let list: Vec<u32> = (0..100u32)
            .flat_map(|i| [(i << 20) | ONE, (i << 20) + (1 << 19)])
            .collect();
        assert_eq!(
            decompress_loss_list(list.into_iter()).count(),
            MAX_DECOMPRESSED_LOSSES
        );
    }
}
