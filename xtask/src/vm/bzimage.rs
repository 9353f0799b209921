//! The ELF `vmlinux` inside a Debian `vmlinuz` (bzImage). QEMU boots it through
//! its PVH entry note, skipping the real-mode setup and the in-guest
//! decompression: 1-3 s less per boot under TCG.
//!
//! The x86 boot protocol (2.08+) gives the compressed payload's place in the
//! setup header: `setup_sects` at 0x1f1, `payload_offset`/`payload_length` at
//! 0x248/0x24c, relative to the protected-mode code after the setup sectors.

use std::path::Path;

use anyhow::{Context, bail};

use super::elf::Elf;
use super::unpack::{self, Format};

/// Extracts the ELF kernel from the bzImage at `bzimage`, writing it to `out`.
/// Fails when the image has no payload in a format we can undo or the kernel
/// has no PVH note (the caller then boots the bzImage itself).
pub(crate) fn extract_vmlinux(bzimage: &Path, scratch: &Path, out: &Path) -> anyhow::Result<()> {
    let image = std::fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    let payload = payload(&image).with_context(|| format!("{}", bzimage.display()))?;
    let format = Format::sniff(payload).with_context(|| {
        format!(
            "{}: payload compressed in a format this harness does not undo (magic {:02x?})",
            bzimage.display(),
            &payload[..payload.len().min(6)]
        )
    })?;
    // The kernel build appends the uncompressed size (4 bytes) to xz and zstd
    // payloads; `xz --single-stream` ignores it, zstd would not.
    let payload = match format {
        Format::Zstd => &payload[..payload.len().saturating_sub(4)],
        Format::Xz | Format::Gzip => payload,
    };
    std::fs::write(scratch, payload).with_context(|| format!("write {}", scratch.display()))?;
    let vmlinux = unpack::decompress(scratch, format);
    std::fs::remove_file(scratch).ok();
    let vmlinux = vmlinux?;
    let elf = Elf::parse(&vmlinux).context("the bzImage payload")?;
    if !elf.has_pvh_note()? {
        bail!(
            "{}: the kernel has no PVH entry note (CONFIG_PVH)",
            bzimage.display()
        );
    }
    std::fs::write(out, &vmlinux).with_context(|| format!("write {}", out.display()))
}

fn payload(image: &[u8]) -> anyhow::Result<&[u8]> {
    if image.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS header)");
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version < 0x208 {
        bail!("boot protocol {version:#x} has no payload fields (needs 2.08+)");
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let word = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().expect("4 bytes"));
    let start = (setup_sects + 1) * 512 + usize::try_from(word(0x248))?;
    let len = usize::try_from(word(0x24c))?;
    image
        .get(start..start + len)
        .context("payload range is past the end of the image")
}
