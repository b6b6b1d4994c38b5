use std::path::Path;

use mirari_core::digest::Digest;
use mirari_core::target::Target;

use super::*;
use crate::backends::testing;

/// An Image the size of the example's: 7 KiB of code and data, 16 KiB of bss and stack past that.
const EXAMPLE: Arm64Image = Arm64Image { text_offset: 0, image_size: 0x5c70 };

#[test]
fn places_the_image_in_place_for_booti_and_the_file_image_after_its_memory_size() {
    let virt = layout(Board::Virt, EXAMPLE, Some(10_240), 32).unwrap();
    assert_eq!(virt, Layout { kernel: 0x4020_0000, initrd: Some(0x4040_0000), board_ram_mib: 32 + FIRMWARE_MIB });
    // A big Image pushes the file image up to the next 2 MiB boundary past its bss.
    let big = Arm64Image { text_offset: 0x8_0000, image_size: 0x30_0000 };
    assert_eq!(layout_of(Board::Virt, big, Some(1)).initrd, Some(0x4060_0000));
    assert_eq!(layout_of(Board::Virt, big, Some(1)).kernel, 0x4028_0000);
    // A Pi 3's memory starts at 0 and is always 1 GiB.
    assert_eq!(
        layout(Board::Raspi3b, EXAMPLE, None, 32).unwrap(),
        Layout { kernel: 0x20_0000, initrd: None, board_ram_mib: 1024 }
    );
}

fn layout_of(board: Board, image: Arm64Image, files: Option<u64>) -> Layout {
    layout(board, image, files, 64).unwrap()
}

#[test]
fn refuses_what_does_not_fit_the_instance_or_the_board() {
    let error = layout(Board::Virt, EXAMPLE, Some(40 << 20), 32).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the Image (23664 bytes) and file image (41943040 bytes) do not fit in memory_mib = 32 (they need 44 MiB)"
    );
    let error = layout(Board::Raspi3b, EXAMPLE, None, 2048).unwrap_err();
    assert_eq!(error.to_string(), "memory_mib = 2048 is more than the raspi3b board leaves an instance (896 MiB)");
}

#[test]
fn the_netboot_script_fetches_the_arguments_the_file_image_and_the_image_then_boots() {
    let with_files = layout(Board::Virt, EXAMPLE, Some(10_240), 32).unwrap();
    assert_eq!(
        netboot_script(&with_files),
        "tftpboot 0x40200000 bootargs.env\n\
         env import -t 0x40200000 ${filesize}\n\
         tftpboot 0x40400000 files.tar\n\
         setenv initrd_size ${filesize}\n\
         tftpboot 0x40200000 Image\n\
         booti 0x40200000 0x40400000:${initrd_size} ${fdtcontroladdr}\n"
    );
    let bare = layout(Board::Virt, EXAMPLE, None, 32).unwrap();
    assert!(netboot_script(&bare).ends_with("tftpboot 0x40200000 Image\nbooti 0x40200000 - ${fdtcontroladdr}\n"));
}

#[test]
fn the_script_image_is_byte_for_byte_what_mkimage_writes() {
    // `SOURCE_DATE_EPOCH=0 mkimage -A arm64 -O linux -T script -C none -n "mirari boot" -d s.cmd s.uimg`
    // with the script above (u-boot-tools 2023.01).
    let layout = layout(Board::Virt, EXAMPLE, Some(10_240), 32).unwrap();
    let image = uimage_script(&netboot_script(&layout));
    assert_eq!(Digest::of(&image).to_string(), "5ca76c586abe973392f32c035d47836937f6134e12c299d62ff285c0d1b1aa47");
}

#[test]
fn boot_arguments_go_raw_into_the_environment_and_line_breaks_are_refused() {
    let layout = layout(Board::Virt, EXAMPLE, None, 32).unwrap();
    let args = ["--ipv4=10.0.0.2/24".to_owned(), "greeting='a;b $c'".to_owned()];
    let files = netboot_files(&layout, &args).unwrap();
    assert_eq!(files.bootargs_env, b"bootargs=--ipv4=10.0.0.2/24 greeting='a;b $c'\n");
    let error = netboot_files(&layout, &["a\nbootcmd=reset".to_owned()]).unwrap_err();
    assert_eq!(error, PlanError::UnsafeBootArgs);
    assert_eq!(sd_environment(&layout, &["a\0".to_owned()]).unwrap_err(), PlanError::UnsafeBootArgs);
}

#[test]
fn the_environment_image_is_byte_for_byte_what_mkenvimage_writes() {
    // `printf 'bootargs=a b\nbootcmd=x\n' > e.txt && mkenvimage -s 0x4000 -o e.env e.txt`
    let image = environment_image(&[("bootargs", "a b".to_owned()), ("bootcmd", "x".to_owned())]);
    assert_eq!(image.len(), SD_ENV_BYTES);
    assert_eq!(Digest::of(&image).to_string(), "44d25a8438994720de3ced3b9d164c3f5fd890411d7010fc362fa9ae7d9ae7f8");
}

#[test]
fn the_sd_environment_boots_from_the_card_at_once_on_the_serial_console() {
    let layout = layout(Board::Raspi3b, EXAMPLE, Some(10_240), 32).unwrap();
    let image = sd_environment(&layout, &["mode=sd".to_owned()]).unwrap();
    let text = String::from_utf8_lossy(&image[4..]);
    let variables: Vec<&str> = text.split('\0').take_while(|v| !v.is_empty()).collect();
    assert_eq!(
        variables,
        [
            "bootargs=mode=sd",
            "bootcmd=fatload mmc 0:1 0x200000 Image; fatload mmc 0:1 0x400000 files.tar; \
             booti 0x200000 0x400000:${filesize} ${fdtcontroladdr}",
            "bootdelay=0",
            "stderr=serial",
            "stdin=serial",
            "stdout=serial",
        ]
    );
}

#[test]
fn the_sd_image_is_a_power_of_two_with_one_fat_partition_after_the_first_mib() {
    assert_eq!(sd_image_bytes(10_000), 16 << 20);
    assert_eq!(sd_image_bytes(20 << 20), 32 << 20);
    let mbr = sd_mbr(16 << 20);
    assert_eq!(&mbr[510..], [0x55, 0xaa]);
    assert_eq!(mbr[446 + 4], 0x0c);
    assert_eq!(u32::from_le_bytes(mbr[454..458].try_into().unwrap()), 2048);
    assert_eq!(u32::from_le_bytes(mbr[458..462].try_into().unwrap()), (16 << 20) / 512 - 2048);
    assert!(mbr[462..510].iter().all(|&b| b == 0), "one partition only");
}

fn argv_of(board: Board, layout: &Layout) -> Vec<String> {
    let launch = testing::launch(Target::Rpi, 0x1122_3344_5566_7788, &[]);
    let machine = Machine {
        qemu: Path::new("qemu-system-aarch64"),
        board,
        firmware: Path::new("/fw/u-boot.bin"),
        layout,
        boot_media: Path::new("/run/i/boot"),
        control_socket: Path::new("/run/i/control.sock"),
    };
    qemu_argv(&machine, &launch).iter().map(|a| a.to_string_lossy().into_owned()).collect()
}

#[test]
fn the_virt_board_netboots_from_a_restricted_user_network() {
    let layout = layout(Board::Virt, EXAMPLE, Some(1), 32).unwrap();
    let argv = argv_of(Board::Virt, &layout).join(" ");
    assert!(argv.starts_with(
        "qemu-system-aarch64 -name mirari-1122334455667788 -machine virt,acpi=off,gic-version=2 -accel tcg"
    ));
    assert!(argv.contains(" -smp 1 -bios /fw/u-boot.bin -netdev user,id=boot,restrict=on,tftp=/run/i/boot "), "{argv}");
    assert!(argv.contains(" -serial stdio -m 96 -nodefaults "), "{argv}");
    assert!(argv.contains(" -semihosting-config enable=on,target=native -qmp unix:"), "{argv}");
    assert!(!argv.contains("chardev"), "{argv}");
}

#[test]
fn the_raspi3b_board_boots_its_sd_card_with_the_control_uart_first_and_the_console_second() {
    let layout = layout(Board::Raspi3b, EXAMPLE, Some(1), 32).unwrap();
    let argv = argv_of(Board::Raspi3b, &layout).join(" ");
    assert!(argv.contains(" -machine raspi3b -accel tcg,thread=single -kernel /fw/u-boot.bin "), "{argv}");
    assert!(argv.contains(" -drive file=/run/i/boot,if=sd,format=raw "), "{argv}");
    assert!(
        argv.contains(
            " -chardev socket,id=control,path=/run/i/control.sock,server=on,wait=off \
             -serial chardev:control -serial stdio -m 1024 "
        ),
        "{argv}"
    );
    assert!(!argv.contains("-netdev"), "{argv}");
}

#[test]
fn a_real_board_is_served_from_its_own_directory_by_dnsmasq() {
    let root = Path::new("/srv/tftp");
    assert_eq!(real_board_dnsmasq(root), "enable-tftp\ntftp-root=/srv/tftp\ntftp-unique-root=mac\n");
    assert_eq!(real_board_dir(root, "B8:27:EB:12:34:56"), Path::new("/srv/tftp/b8-27-eb-12-34-56"));
    // A Pi 3's netboot is the virt board's script with the Pi's memory map.
    let pi = layout(Board::Raspi3b, EXAMPLE, Some(10_240), 32).unwrap();
    assert!(netboot_script(&pi).starts_with("tftpboot 0x200000 bootargs.env\n"));
    assert!(netboot_script(&pi).ends_with("booti 0x200000 0x400000:${initrd_size} ${fdtcontroladdr}\n"));
}
