//! AMIs made of raw disk images, named by the image's sha256.
//!
//! [`Ec2::upload_image`] writes the file into a new EBS snapshot with the EBS direct APIs
//! (no instance, no S3 bucket, no VM import role): a reader thread streams the file one
//! 512 KiB block at a time, hashing it as it goes, and at most [`IN_FLIGHT`] blocks are on their
//! way at once, so memory stays bounded whatever the image's size. All-zero blocks are not sent
//! (a snapshot reads zeros where it has no block). The snapshot is completed only if the file's
//! digest is the one the caller named, then registered as an x86_64 HVM AMI booting by legacy
//! BIOS from `/dev/xvda`. Snapshot and AMI carry `mirari:image-digest`, which is how
//! [`Ec2::find_image`] finds an image already uploaded.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::ChecksumAlgorithm;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, ImageState, ResourceType,
    SnapshotState, Tag, TagSpecification, VolumeType,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mirari_core::digest::{Digest, Hasher};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::{Ec2Error, Ec2ErrorKind};
use crate::{Ec2, tags};

/// The EBS direct APIs' block size.
pub const BLOCK: usize = 512 * 1024;
const GIB: u64 = 1 << 30;
/// The largest EBS snapshot (64 TiB).
const MAX_VOLUME_GIB: u64 = 64 * 1024;
/// Blocks being sent at once; with the reader's queue, what bounds the memory of an upload.
pub const IN_FLIGHT: usize = 8;
/// Blocks read ahead of the uploads.
const READ_AHEAD: usize = 2;
/// How long a completed snapshot may take to become usable before the upload gives up.
const SNAPSHOT_READY: Duration = Duration::from_secs(30 * 60);
const OPERATION: &str = "UploadImage";
const ROOT_DEVICE: &str = "/dev/xvda";

/// A registered AMI and the snapshot behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub ami: String,
    pub snapshot: String,
}

/// One block of the file that is not all zeros.
#[derive(Debug)]
struct DataBlock {
    index: i32,
    data: Vec<u8>,
    /// The base64 of the block's sha256, as `PutSnapshotBlock` wants it.
    checksum: String,
}

/// Base64 of the sha256 of `block`.
fn checksum(block: &[u8]) -> String {
    BASE64.encode(Sha256::digest(block))
}

/// The snapshot size for `bytes` of image: whole GiB, at least one.
fn volume_gib(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

/// An AMI name as EC2 takes it: 3 to 128 of letters, digits and `( ) [ ] . / - ' @ _` and space.
fn validate_image_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " ()[]./-'@_".contains(c);
    if (3..=128).contains(&name.len()) && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(format!("image name `{name}` must be 3 to 128 letters, digits, spaces or ( ) [ ] . / - ' @ _"))
    }
}

/// Reads `file` block by block (the last one padded with zeros), sends the blocks that are not
/// all zeros and returns the digest of the file's bytes (unpadded). Runs on a blocking thread;
/// stops early when the uploads stopped listening.
fn read_blocks(mut file: File, blocks: &mpsc::Sender<DataBlock>) -> io::Result<Digest> {
    let mut hasher = Hasher::default();
    for index in 0.. {
        let mut data = vec![0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match file.read(&mut data[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update(&data[..filled]);
        if data.iter().any(|&b| b != 0) {
            let checksum = checksum(&data);
            if blocks.blocking_send(DataBlock { index, data, checksum }).is_err() {
                return Err(io::Error::other("the upload stopped"));
            }
        }
        if filled < BLOCK {
            break;
        }
    }
    Ok(hasher.finish())
}

impl Ec2 {
    /// The AMI tagged `mirari:image-digest=DIGEST` owned by this account that is available (or
    /// still being made available), if any; of several, the first created.
    pub async fn find_image(&self, digest: &Digest) -> Result<Option<String>, Ec2Error> {
        let output = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name(format!("tag:{}", tags::IMAGE_DIGEST)).values(digest.to_string()).build())
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk("DescribeImages", e))?;
        let mut usable: Vec<_> = output
            .images()
            .iter()
            .filter(|image| matches!(image.state(), Some(ImageState::Available | ImageState::Pending)))
            .filter_map(|image| Some((image.creation_date().unwrap_or_default(), image.image_id()?)))
            .collect();
        usable.sort();
        Ok(usable.first().map(|(_, id)| (*id).to_owned()))
    }

    /// Uploads the raw disk image at `raw`, whose sha256 must be `digest`, into a new snapshot
    /// and registers it as the AMI `name`. A failure after the snapshot was started deletes what
    /// was made.
    pub async fn upload_image(&self, raw: &Path, digest: &Digest, name: &str) -> Result<Image, Ec2Error> {
        validate_image_name(name).map_err(|message| Ec2Error::invalid(OPERATION, message))?;
        let opening = |e| Ec2Error::io(OPERATION, format!("opening {}", raw.display()), e);
        let file = File::open(raw).map_err(opening)?;
        let bytes = file.metadata().map_err(opening)?.len();
        if bytes == 0 {
            return Err(Ec2Error::invalid(OPERATION, format!("{} is empty", raw.display())));
        }
        if volume_gib(bytes) > MAX_VOLUME_GIB {
            return Err(Ec2Error::invalid(
                OPERATION,
                format!("{} is larger than a snapshot can be (64 TiB)", raw.display()),
            ));
        }

        let started = self
            .ebs
            .start_snapshot()
            .volume_size(volume_gib(bytes) as i64)
            .description(format!("mirari image {name}"))
            .tags(aws_sdk_ebs::types::Tag::builder().key(tags::IMAGE_DIGEST).value(digest.to_string()).build())
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk("StartSnapshot", e))?;
        let snapshot =
            started.snapshot_id().ok_or_else(|| Ec2Error::unexpected("StartSnapshot", "no snapshot ID"))?.to_owned();

        let made = async {
            let changed = self.put_blocks(&snapshot, file, raw, digest).await?;
            self.ebs
                .complete_snapshot()
                .snapshot_id(&snapshot)
                .changed_blocks_count(changed)
                .send()
                .await
                .map_err(|e| Ec2Error::from_sdk("CompleteSnapshot", e))?;
            self.wait_for_snapshot(&snapshot).await?;
            self.register(&snapshot, name, Tag::builder().key(tags::IMAGE_DIGEST).value(digest.to_string()).build())
                .await
        }
        .await;
        match made {
            Ok(ami) => Ok(Image { ami, snapshot }),
            Err(error) => {
                // Best effort: the caller learns of the first failure, not of the clean-up's.
                let _ = self.ec2.delete_snapshot().snapshot_id(&snapshot).send().await;
                Err(error)
            }
        }
    }

    /// Sends every block of `file` that is not all zeros, at most [`IN_FLIGHT`] at once, and
    /// checks the file's digest; returns how many blocks were sent.
    async fn put_blocks(&self, snapshot: &str, file: File, raw: &Path, digest: &Digest) -> Result<i32, Ec2Error> {
        let (sender, mut blocks) = mpsc::channel(READ_AHEAD);
        let reader = tokio::task::spawn_blocking(move || read_blocks(file, &sender));
        let mut sending = JoinSet::new();
        let mut changed = 0i32;
        while let Some(block) = blocks.recv().await {
            while sending.len() >= IN_FLIGHT {
                joined(sending.join_next().await)?;
            }
            let request = self
                .ebs
                .put_snapshot_block()
                .snapshot_id(snapshot)
                .block_index(block.index)
                .data_length(BLOCK as i32)
                .checksum(block.checksum)
                .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .block_data(ByteStream::from(block.data));
            sending.spawn(async move {
                request.send().await.map(drop).map_err(|e| Ec2Error::from_sdk("PutSnapshotBlock", e))
            });
            changed += 1;
        }
        while let Some(sent) = sending.join_next().await {
            joined(Some(sent))?;
        }
        let read = reader
            .await
            .map_err(|e| Ec2Error::io(OPERATION, format!("reading {}", raw.display()), io::Error::other(e)))?;
        let found = read.map_err(|e| Ec2Error::io(OPERATION, format!("reading {}", raw.display()), e))?;
        if found != *digest {
            let message = format!("{} has sha256 {found}, not {digest}", raw.display());
            return Err(Ec2Error::new(Ec2ErrorKind::Invalid, "DigestMismatch", message, OPERATION));
        }
        Ok(changed)
    }

    /// Waits until EC2 reports the snapshot completed.
    async fn wait_for_snapshot(&self, snapshot: &str) -> Result<(), Ec2Error> {
        let deadline = tokio::time::Instant::now() + SNAPSHOT_READY;
        let mut pause = Duration::from_millis(500);
        loop {
            let output = self
                .ec2
                .describe_snapshots()
                .snapshot_ids(snapshot)
                .send()
                .await
                .map_err(|e| Ec2Error::from_sdk("DescribeSnapshots", e))?;
            let found = output.snapshots().first();
            match found.and_then(|s| s.state()) {
                Some(SnapshotState::Completed) => return Ok(()),
                Some(SnapshotState::Error) => {
                    let why = found.and_then(|s| s.state_message()).unwrap_or("no reason given");
                    return Err(Ec2Error::new(
                        Ec2ErrorKind::Other,
                        "SnapshotFailed",
                        format!("snapshot {snapshot}: {why}"),
                        OPERATION,
                    ));
                }
                state if tokio::time::Instant::now() >= deadline => {
                    let state = state.map_or("unknown", |s| s.as_str());
                    return Err(Ec2Error::new(
                        Ec2ErrorKind::Other,
                        "SnapshotNotReady",
                        format!("snapshot {snapshot} is still {state} after {} minutes", SNAPSHOT_READY.as_secs() / 60),
                        OPERATION,
                    ));
                }
                _ => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(15));
        }
    }

    /// Registers the snapshot as an AMI and tags it with `digest`.
    async fn register(&self, snapshot: &str, name: &str, digest: Tag) -> Result<String, Ec2Error> {
        let root = BlockDeviceMapping::builder()
            .device_name(ROOT_DEVICE)
            .ebs(
                EbsBlockDevice::builder()
                    .snapshot_id(snapshot)
                    .delete_on_termination(true)
                    .volume_type(VolumeType::Gp3)
                    .build(),
            )
            .build();
        let registered = self
            .ec2
            .register_image()
            .name(name)
            .description(format!("mirari image {}", digest.value().unwrap_or_default()))
            .architecture(ArchitectureValues::X8664)
            .virtualization_type("hvm")
            .boot_mode(BootModeValues::LegacyBios)
            .root_device_name(ROOT_DEVICE)
            .block_device_mappings(root)
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Image).tags(digest.clone()).build(),
            )
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk("RegisterImage", e))?;
        let ami = registered.image_id().ok_or_else(|| Ec2Error::unexpected("RegisterImage", "no image ID"))?.to_owned();
        // EC2 tags the AMI as it registers it; moto 5.2 ignores RegisterImage's tags, so tag it
        // again (idempotent) or find_image would never find it there.
        let tagged = self.ec2.create_tags().resources(&ami).tags(digest).send().await;
        if let Err(error) = tagged {
            let _ = self.ec2.deregister_image().image_id(&ami).send().await;
            return Err(Ec2Error::from_sdk("CreateTags", error));
        }
        Ok(ami)
    }

    /// Writes the snapshot's whole volume to `out` (`ListSnapshotBlocks`, then
    /// `GetSnapshotBlock` for each block, checked against its checksum), zeros where it has no
    /// block. For tests that compare a snapshot with the image it was made from.
    pub async fn read_snapshot(&self, snapshot: &str, out: &Path) -> Result<(), Ec2Error> {
        const OPERATION: &str = "ReadSnapshot";
        let writing = |e| Ec2Error::io(OPERATION, format!("writing {}", out.display()), e);
        let mut file = tokio::fs::File::create(out).await.map_err(writing)?;
        let mut pages = self.ebs.list_snapshot_blocks().snapshot_id(snapshot).into_paginator().send();
        let mut sized = false;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Ec2Error::from_sdk("ListSnapshotBlocks", e))?;
            if !sized {
                let gib =
                    page.volume_size().and_then(|gib| u64::try_from(gib).ok()).filter(|gib| *gib <= MAX_VOLUME_GIB);
                let gib = gib.ok_or_else(|| {
                    Ec2Error::unexpected(OPERATION, format!("volume size {:?} GiB", page.volume_size()))
                })?;
                file.set_len(gib * GIB).await.map_err(writing)?;
                sized = true;
            }
            for block in page.blocks() {
                let (Some(index), Some(token)) = (block.block_index(), block.block_token()) else { continue };
                let data = self.get_block(snapshot, index, token).await?;
                let offset = u64::try_from(index).unwrap_or_default() * BLOCK as u64;
                file.seek(io::SeekFrom::Start(offset)).await.map_err(writing)?;
                file.write_all(&data).await.map_err(writing)?;
            }
        }
        file.sync_all().await.map_err(writing)
    }

    /// One block, read to at most [`BLOCK`] bytes and checked against its checksum.
    async fn get_block(&self, snapshot: &str, index: i32, token: &str) -> Result<Vec<u8>, Ec2Error> {
        const OPERATION: &str = "GetSnapshotBlock";
        let mut output = self
            .ebs
            .get_snapshot_block()
            .snapshot_id(snapshot)
            .block_index(index)
            .block_token(token)
            .send()
            .await
            .map_err(|e| Ec2Error::from_sdk(OPERATION, e))?;
        let bad = |message: String| Ec2Error::unexpected(OPERATION, message);
        let mut data = Vec::with_capacity(BLOCK);
        while let Some(chunk) = output.block_data.try_next().await.map_err(|e| bad(format!("block {index}: {e}")))? {
            if data.len() + chunk.len() > BLOCK {
                return Err(bad(format!("block {index} is larger than {BLOCK} bytes")));
            }
            data.extend_from_slice(&chunk);
        }
        if data.len() != BLOCK {
            return Err(bad(format!("block {index} has {} bytes, not {BLOCK}", data.len())));
        }
        if output.checksum().is_some_and(|expected| expected != checksum(&data)) {
            return Err(bad(format!("block {index} does not match its checksum")));
        }
        Ok(data)
    }
}

/// A finished block upload's result.
fn joined(sent: Option<Result<Result<(), Ec2Error>, tokio::task::JoinError>>) -> Result<(), Ec2Error> {
    match sent {
        None => Ok(()),
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(Ec2Error::new(
            Ec2ErrorKind::Other,
            "TaskFailed",
            format!("a block upload did not finish: {e}"),
            OPERATION,
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn volumes_are_whole_gib() {
        assert_eq!(volume_gib(1), 1);
        assert_eq!(volume_gib(GIB), 1);
        assert_eq!(volume_gib(GIB + 1), 2);
        assert_eq!(volume_gib(5 * GIB), 5);
    }

    #[test]
    fn image_names_follow_ec2() {
        assert_eq!(validate_image_name("mirari-hello (0a1b2c)"), Ok(()));
        for bad in ["ab", "hello!", &"x".repeat(129)] {
            assert!(validate_image_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_reader_skips_zero_blocks_pads_the_last_and_hashes_the_file() {
        let mut bytes = vec![0u8; BLOCK]; // block 0: zeros
        bytes.extend((0..BLOCK).map(|i| (i % 251) as u8)); // block 1: data
        bytes.extend(vec![0u8; BLOCK]); // block 2: zeros
        bytes.extend([7u8; 1000]); // block 3: 1000 bytes, then padding
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&bytes).expect("write");

        let (sender, mut receiver) = mpsc::channel(8);
        let digest = read_blocks(File::open(file.path()).expect("open"), &sender).expect("read");
        assert_eq!(digest, Digest::of(&bytes));
        drop(sender);
        let mut sent = Vec::new();
        while let Ok(block) = receiver.try_recv() {
            sent.push(block);
        }
        assert_eq!(sent.iter().map(|b| b.index).collect::<Vec<_>>(), [1, 3]);
        assert!(sent.iter().all(|b| b.data.len() == BLOCK && b.checksum == checksum(&b.data)));
        assert_eq!(&sent[1].data[..1000], &[7u8; 1000][..]);
        assert!(sent[1].data[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_reader_stops_when_nobody_listens() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(&vec![1u8; 3 * BLOCK]).expect("write");
        let (sender, receiver) = mpsc::channel(1);
        drop(receiver);
        let error = read_blocks(File::open(file.path()).expect("open"), &sender).expect_err("nobody listens");
        assert_eq!(error.to_string(), "the upload stopped");
    }
}
