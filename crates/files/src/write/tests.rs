use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use super::*;

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The process umask, read without changing it (tests run in parallel).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).expect("Linux >= 4.7 reports the umask");
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_new_file_gets_the_usual_mode_and_leaves_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.bin");
    Output::new(&path, &[]).unwrap().write(b"content").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"content");
    assert_eq!(mode(&path), 0o666 & !umask());
    assert_eq!(names_in(dir.path()), ["new.bin"]);
}

#[test]
fn a_replaced_file_keeps_its_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept.bin");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    Output::new(&path, &[]).unwrap().write(b"new").unwrap();
    assert_eq!((std::fs::read(&path).unwrap(), mode(&path)), (b"new".to_vec(), 0o640));
}

#[test]
fn a_failed_write_leaves_the_target_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious.bin");
    std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
    let err = Output::new(&path, &[])
        .unwrap()
        .write_with(|w| {
            w.write_all(&[1u8; 4096])?;
            Err(io::Error::other("the disk is full"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), format!("output {}: the disk is full", path.display()));
    assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 1 << 20]);
    assert_eq!(names_in(dir.path()), ["precious.bin"]);
}

#[test]
fn an_output_that_is_an_input_is_refused_through_links() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("weights.safetensors");
    std::fs::write(&input, b"weights").unwrap();
    let symlink = dir.path().join("link");
    std::os::unix::fs::symlink(&input, &symlink).unwrap();
    let hard = dir.path().join("hard");
    std::fs::hard_link(&input, &hard).unwrap();
    for output in [&input, &symlink, &hard] {
        let err = Output::new(output, &[Path::new("/nonexistent"), &input]).unwrap_err();
        assert!(err.is_usage(), "{err}");
        assert!(err.to_string().contains("is the same file as the input"), "{err}");
    }
    // The input named through a link is the same file too.
    assert!(Output::new(&input, &[&symlink]).unwrap_err().is_usage());
    assert_eq!(std::fs::read(&input).unwrap(), b"weights");
}

#[test]
fn a_symlink_is_followed_and_stays_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.bin");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.path().join("link.bin");
    std::os::unix::fs::symlink("real.bin", &link).unwrap();
    Output::new(&link, &[]).unwrap().write(b"new").unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&real).unwrap(), b"new");
    // A dangling link names the file to create.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink("created.bin", &dangling).unwrap();
    Output::new(&dangling, &[]).unwrap().write(b"made").unwrap();
    assert_eq!(std::fs::read(dir.path().join("created.bin")).unwrap(), b"made");
}

#[test]
fn a_fifo_is_written_in_place_and_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    // Nobody reads it: refused at once rather than blocking.
    let err = Output::new(&fifo, &[]).unwrap().write(b"x").unwrap_err();
    assert!(err.to_string().ends_with("it is a FIFO that no process is reading"), "{err}");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    // Wait for the reader to open its end, then write.
    let output = Output::new(&fifo, &[]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match output.write(b"through the pipe") {
            Ok(()) => break,
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(reader.join().unwrap(), b"through the pipe");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_character_device_is_written_in_place() {
    Output::new(Path::new("/dev/null"), &[]).unwrap().write(b"discarded").unwrap();
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn directories_and_missing_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Output::new(dir.path(), &[]).unwrap_err();
    assert!(err.to_string().ends_with("it is a directory; give the path of a file"), "{err}");
    let err = Output::new(&dir.path().join("no/such/dir/out.bin"), &[]).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn a_bare_file_name_is_written_in_the_current_directory() {
    assert_eq!(directory_of(Path::new("out.bin")), Path::new("."));
    assert_eq!(directory_of(Path::new("/a/out.bin")), Path::new("/a"));
}

#[test]
fn a_symlink_loop_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = Output::new(&a, &[]).unwrap_err();
    assert!(err.to_string().contains("levels of symbolic links"), "{err}");
}

#[test]
fn a_named_temporary_file_is_renamed_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t.bin");
    let mut temp = Temp::named(dir.path(), &target).unwrap();
    temp.file.write_all(b"kept").unwrap();
    temp.persist(dir.path(), &target).unwrap();
    drop(temp);
    assert_eq!(std::fs::read(&target).unwrap(), b"kept");
    let abandoned = Temp::named(dir.path(), &target).unwrap();
    assert_eq!(names_in(dir.path()).len(), 2, "the named temporary file is visible while it lives");
    drop(abandoned);
    assert_eq!(names_in(dir.path()), ["t.bin"]);
}
