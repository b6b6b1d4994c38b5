//! What a target's artifact must look like, checked where it is built and again where it runs.
//!
//! Only formats with a header worth reading are checked: an `rpi` artifact is a Linux arm64
//! `Image` (what U-Boot's `booti` boots), whose 64-byte header carries a magic number and the
//! size the image occupies in memory, bss included.

use crate::target::Target;

/// The header of a Linux arm64 `Image` (Documentation/arch/arm64/booting.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm64Image {
    /// Where the image wants to sit past a 2 MiB-aligned base.
    pub text_offset: u64,
    /// The bytes it occupies once loaded, bss included.
    pub image_size: u64,
}

/// The header's length, and where its magic `ARM\x64` sits.
pub const ARM64_HEADER_BYTES: usize = 64;
const ARM64_MAGIC_AT: usize = 56;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("an {target} artifact must be a Linux arm64 Image (what U-Boot's booti boots): {why}")]
    NotArm64Image { target: Target, why: &'static str },
}

impl Arm64Image {
    /// Reads the header from the first bytes of the file.
    pub fn parse(head: &[u8]) -> Result<Self, ArtifactError> {
        let not = |why| ArtifactError::NotArm64Image { target: Target::Rpi, why };
        if head.len() < ARM64_HEADER_BYTES {
            return Err(not("it is shorter than the 64-byte Image header"));
        }
        if &head[ARM64_MAGIC_AT..ARM64_MAGIC_AT + 4] != ARM64_MAGIC {
            return Err(not("it has no ARM\\x64 magic at byte 56 (an ELF file needs objcopy -O binary)"));
        }
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let (text_offset, image_size, flags) = (word(8), word(16), word(24));
        if flags & 1 != 0 {
            return Err(not("its flags say big-endian"));
        }
        // image_size 0 is what kernels before 3.17 wrote; they are not bootable this way.
        if image_size < (head.len().min(ARM64_HEADER_BYTES) as u64) {
            return Err(not("its header gives no image size"));
        }
        Ok(Self { text_offset, image_size })
    }
}

/// Checks the first bytes of an artifact built for `target`.
pub fn check(target: Target, head: &[u8]) -> Result<(), ArtifactError> {
    match target {
        Target::Rpi => Arm64Image::parse(head).map(drop),
        Target::Unix | Target::Kvm | Target::Xen | Target::Freebsd | Target::Js => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: &[u8; 4], flags: u64, image_size: u64) -> Vec<u8> {
        let mut head = vec![0u8; ARM64_HEADER_BYTES];
        head[16..24].copy_from_slice(&image_size.to_le_bytes());
        head[24..32].copy_from_slice(&flags.to_le_bytes());
        head[ARM64_MAGIC_AT..ARM64_MAGIC_AT + 4].copy_from_slice(magic);
        head
    }

    #[test]
    fn reads_an_arm64_image_header() {
        let image = Arm64Image::parse(&header(ARM64_MAGIC, 0xa, 0x8000)).unwrap();
        assert_eq!(image, Arm64Image { text_offset: 0, image_size: 0x8000 });
        assert_eq!(check(Target::Rpi, &header(ARM64_MAGIC, 0xa, 0x8000)), Ok(()));
    }

    #[test]
    fn refuses_what_is_not_an_arm64_image_with_the_reason() {
        let elf = b"\x7fELF\x02\x01\x01\0".repeat(8);
        let error = check(Target::Rpi, &elf).unwrap_err().to_string();
        assert_eq!(
            error,
            "an rpi artifact must be a Linux arm64 Image (what U-Boot's booti boots): it has no ARM\\x64 magic \
             at byte 56 (an ELF file needs objcopy -O binary)"
        );
        assert!(check(Target::Rpi, b"short").unwrap_err().to_string().contains("shorter than the 64-byte"));
        assert!(check(Target::Rpi, &header(ARM64_MAGIC, 1, 0x8000)).unwrap_err().to_string().contains("big-endian"));
        assert!(check(Target::Rpi, &header(ARM64_MAGIC, 0xa, 0)).unwrap_err().to_string().contains("no image size"));
        // Other targets' artifacts are not read.
        assert_eq!(check(Target::Kvm, b"short"), Ok(()));
    }
}
