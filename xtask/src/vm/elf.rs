//! Just enough of 64-bit little-endian ELF for the harness: a section's bytes
//! (a module's `.modinfo`), whether a program is static (no `PT_INTERP`), and
//! whether a kernel image carries the PVH entry note QEMU boots it by.

use anyhow::{Context, bail};

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point, in a note named "Xen".
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A parsed ELF64 LE image, borrowing its bytes.
#[derive(Debug)]
pub(crate) struct Elf<'a> {
    bytes: &'a [u8],
}

/// One program header: (type, file offset, file size).
type Segment = (u32, usize, usize);

impl<'a> Elf<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> anyhow::Result<Self> {
        if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
            bail!("not an ELF file");
        }
        if bytes[4] != 2 || bytes[5] != 1 {
            bail!("not a 64-bit little-endian ELF file");
        }
        Ok(Self { bytes })
    }

    /// The bytes of the section named `name`, if there is one.
    pub(crate) fn section(&self, name: &str) -> anyhow::Result<Option<&'a [u8]>> {
        let shoff = self.u64_at(0x28)?;
        let entsize = usize::from(self.u16_at(0x3a)?);
        let count = usize::from(self.u16_at(0x3c)?);
        let names_index = usize::from(self.u16_at(0x3e)?);
        let header = |i: usize| -> anyhow::Result<(u32, usize, usize)> {
            let at = shoff + i * entsize;
            Ok((
                self.u32_at(at)?,
                self.u64_at(at + 24)?,
                self.u64_at(at + 32)?,
            ))
        };
        let (_, table_at, table_len) = header(names_index).context("section name table")?;
        let names = self.slice(table_at, table_len)?;
        for i in 0..count {
            let (name_offset, at, len) = header(i)?;
            let start = usize::try_from(name_offset)?;
            let Some(rest) = names.get(start..) else {
                bail!("section {i}: name offset out of range");
            };
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            if &rest[..end] == name.as_bytes() {
                return self.slice(at, len).map(Some);
            }
        }
        Ok(None)
    }

    /// Whether the program asks for a dynamic loader (it has `PT_INTERP`).
    pub(crate) fn is_dynamic(&self) -> anyhow::Result<bool> {
        Ok(self.segments()?.iter().any(|s| s.0 == PT_INTERP))
    }

    /// Whether a kernel image has the PVH entry note (`CONFIG_PVH`), which lets QEMU
    /// boot the ELF `vmlinux` directly.
    pub(crate) fn has_pvh_note(&self) -> anyhow::Result<bool> {
        for (kind, at, len) in self.segments()? {
            if kind != PT_NOTE {
                continue;
            }
            let notes = self.slice(at, len)?;
            let mut pos = 0;
            while pos + 12 <= notes.len() {
                let word = |i: usize| {
                    u32::from_le_bytes(notes[pos + 4 * i..pos + 4 * i + 4].try_into().unwrap())
                };
                let (name_len, desc_len, note_type) = (word(0) as usize, word(1) as usize, word(2));
                let name_at = pos + 12;
                let name = notes.get(name_at..name_at + name_len).unwrap_or_default();
                if note_type == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                    return Ok(true);
                }
                pos = name_at + name_len.next_multiple_of(4) + desc_len.next_multiple_of(4);
            }
        }
        Ok(false)
    }

    fn segments(&self) -> anyhow::Result<Vec<Segment>> {
        let phoff = self.u64_at(0x20)?;
        let entsize = usize::from(self.u16_at(0x36)?);
        let count = usize::from(self.u16_at(0x38)?);
        (0..count)
            .map(|i| {
                let at = phoff + i * entsize;
                Ok((
                    self.u32_at(at)?,
                    self.u64_at(at + 8)?,
                    self.u64_at(at + 32)?,
                ))
            })
            .collect()
    }

    fn slice(&self, at: usize, len: usize) -> anyhow::Result<&'a [u8]> {
        at.checked_add(len)
            .and_then(|end| self.bytes.get(at..end))
            .with_context(|| format!("ELF range {at}+{len} is past the end of the file"))
    }

    fn u16_at(&self, at: usize) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.slice(at, 2)?.try_into()?))
    }

    fn u32_at(&self, at: usize) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.slice(at, 4)?.try_into()?))
    }

    fn u64_at(&self, at: usize) -> anyhow::Result<usize> {
        let value = u64::from_le_bytes(self.slice(at, 8)?.try_into()?);
        usize::try_from(value).context("ELF offset does not fit in memory")
    }
}
