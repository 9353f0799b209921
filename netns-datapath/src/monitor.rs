//! [`DecisionStream`]: the data path's decisions, read from the kernel's
//! ring buffer, and the switch that makes the programs write them. While
//! the switch is off (nobody monitors) a decision costs the programs one
//! array lookup and writes nothing.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{Array, Map, MapData, RingBuf};
use netns_ebpf::{Decision, names};

use crate::view::own_handle;
use crate::{DataPath, DataPathError, map_error};

/// The reading end of the data path's decisions (its own descriptors of
/// the maps: it outlives the [`DataPath`] handle and any pin). One reader
/// per data path: items read here are gone for any other.
pub struct DecisionStream {
    ring: RingBuf<MapData>,
    switch: Array<MapData, u32>,
}

impl std::fmt::Debug for DecisionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionStream").finish_non_exhaustive()
    }
}

impl DecisionStream {
    /// Opens `datapath`'s ring buffer and switch; the switch is left as it is.
    pub fn of(datapath: &DataPath) -> Result<DecisionStream, DataPathError> {
        let ring = own_handle(datapath, names::DECISIONS)?;
        let ring = RingBuf::try_from(Map::RingBuf(ring))
            .map_err(|e| map_error(names::DECISIONS, "open", e))?;
        let switch = own_handle(datapath, names::MONITORING)?;
        let switch = Array::try_from(Map::Array(switch))
            .map_err(|e| map_error(names::MONITORING, "open", e))?;
        Ok(DecisionStream { ring, switch })
    }

    /// Makes the programs report decisions (`true`) or stop (`false`).
    pub fn set_reporting(&mut self, on: bool) -> Result<(), DataPathError> {
        self.switch
            .set(0, &u32::from(on), 0)
            .map_err(|e| map_error(names::MONITORING, "switch", e))
    }

    /// Whether the programs report decisions now, as the kernel's map says.
    pub fn reporting(&self) -> Result<bool, DataPathError> {
        self.switch
            .get(&0, 0)
            .map(|on| on != 0)
            .map_err(|e| map_error(names::MONITORING, "read", e))
    }

    /// The next decision waiting, if any (never blocks: poll [`Self::as_fd`]
    /// for readability to wait). A malformed item is skipped.
    pub fn next_decision(&mut self) -> Option<Decision> {
        loop {
            let item = self.ring.next()?;
            if item.len() < std::mem::size_of::<Decision>() {
                continue;
            }
            // SAFETY: the item holds at least a Decision's bytes, written by
            // the programs as one; Decision is plain old data, and the read
            // is unaligned-safe.
            return Some(unsafe { item.as_ptr().cast::<Decision>().read_unaligned() });
        }
    }
}

impl AsFd for DecisionStream {
    /// Readable when decisions wait (epoll).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl DataPath {
    /// The reading end of this data path's decisions ([`DecisionStream`]).
    pub fn decisions(&self) -> Result<DecisionStream, DataPathError> {
        DecisionStream::of(self)
    }
}
