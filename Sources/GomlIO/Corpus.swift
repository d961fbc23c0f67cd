// Corpus: the training text as files on disk. `--data PATH…` lists files and directories
// (recursively, byte-wise sorted paths, hidden names skipped); each file is memory-mapped
// read-only, so every rank on a host shares the page cache and nothing is copied. A SIGBUS
// guard (CCorpusGuard) turns a file shrinking under its map into a clear error. The
// fingerprint (file sizes and the first and last MiB of each file) lets ranks check they
// see the same corpus, and checkpoints record which corpus they were trained on.

import CCorpusGuard
import Foundation
import GomlCore
#if canImport(Glibc)
import Glibc
#endif

public struct CorpusFile: Sendable {
    public let path: String
    public let size: Int
}

/// The corpus's file maps: unmapped when the last view of them goes. Not thread-safe: the
/// trainer releases pages from one thread.
final class CorpusMapping: ByteSourceOwner {
    /// In address order once `seal()` ran.
    var regions: [(base: UnsafeMutableRawPointer, length: Int)] = []
    /// Page tables map at most this span around a fault (fault-around never crosses it).
    static let releaseBlock = 2 << 20
    /// Distinct blocks read since the last release; released together when this many gather,
    /// so a small corpus read over and over costs one release per `pendingCapacity` blocks.
    static let pendingCapacity = 64
    private let pending = UnsafeMutablePointer<(start: Int, end: Int)>.allocate(capacity: pendingCapacity)
    private var pendingCount = 0
    private let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    func seal() { regions.sort { $0.base < $1.base } }

    /// Marks for release the 2 MiB-aligned blocks around `bytes`, clipped to their file's map
    /// (never a neighbour's memory). Released pages stay in the page cache; a later read maps
    /// them again. Without this, resident memory climbs with every sampled sequence (the kernel
    /// maps up to 16 pages around each fault) towards the size of the corpus.
    func releasePages(around bytes: UnsafeRawBufferPointer) {
        guard let start = bytes.baseAddress, bytes.count > 0, !regions.isEmpty else { return }
        var low = 0, high = regions.count - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if UnsafeRawPointer(regions[mid].base) <= start { low = mid } else { high = mid - 1 }
        }
        let base = Int(bitPattern: regions[low].base), block = Self.releaseBlock
        let regionEnd = base + (regions[low].length + pageSize - 1) / pageSize * pageSize
        let first = max(base, Int(bitPattern: start) / block * block)
        let last = min(regionEnd, (Int(bitPattern: start) + bytes.count + block - 1) / block * block)
        guard first < last else { return }
        for i in 0..<pendingCount where pending[i].start == first && pending[i].end == last { return }
        pending[pendingCount] = (first, last)
        pendingCount += 1
        if pendingCount == Self.pendingCapacity { releasePending() }
    }

    private func releasePending() {
        for i in 0..<pendingCount {
            madvise(UnsafeMutableRawPointer(bitPattern: pending[i].start), pending[i].end - pending[i].start, MADV_DONTNEED)
        }
        pendingCount = 0
    }

    deinit {
        pending.deallocate()
        for region in regions {
            goml_corpus_unguard(region.base)
            munmap(region.base, region.length)
        }
    }
}

public struct Corpus {
    public let files: [CorpusFile]
    /// The files' concatenation, mapped.
    public let bytes: ByteSource
    public let fingerprint: UInt64
    public var count: Int { bytes.count }

    /// Bytes hashed at each end of every file.
    public static let fingerprintSpan = 1 << 20

    /// "1 file, 1115394 bytes, fingerprint 3f2a…"
    public var summary: String {
        "\(files.count) file\(files.count == 1 ? "" : "s"), \(count) bytes, fingerprint \(Corpus.hex(fingerprint))"
    }

    public static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// Lists and maps `paths` (the values of `flag`); every error names the path and the fix.
    public static func open(_ paths: [String], flag: String, host: String) throws -> Corpus {
        let listed = try list(paths, flag: flag, host: host)
        let mapping = CorpusMapping()
        var files: [CorpusFile] = [], pieces: [UnsafeBufferPointer<UInt8>] = []
        var hasher = FingerprintHasher()
        var scratch = [UInt8](repeating: 0, count: fingerprintSpan)
        hasher.add(UInt64(listed.count))
        for path in listed {
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                throw FileError("data file \(path) cannot be read (\(String(cString: strerror(errno)))); fix its permissions or leave it out of \(flag)")
            }
            defer { close(fd) }
            var status = stat()
            guard fstat(fd, &status) == 0 else {
                throw FileError("data file \(path) cannot be read (\(String(cString: strerror(errno)))); fix it or leave it out of \(flag)")
            }
            let size = Int(status.st_size)
            files.append(CorpusFile(path: path, size: size))
            hasher.add(UInt64(size))
            try hashEnds(of: fd, path: path, size: size, into: &hasher, scratch: &scratch, flag: flag)
            guard size > 0 else { continue }
            guard let base = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else {
                throw FileError("data file \(path) cannot be memory-mapped (\(String(cString: strerror(errno)))); with very many files raise vm.max_map_count or join them into fewer files")
            }
            mapping.regions.append((base, size))
            // Batches read scattered sequences: read-ahead would only fill memory.
            madvise(base, size, MADV_RANDOM)
            guard goml_corpus_guard(base, size, path) == 0 else { throw FileError("out of memory guarding the map of \(path)") }
            pieces.append(UnsafeBufferPointer(start: base.assumingMemoryBound(to: UInt8.self), count: size))
        }
        mapping.seal()
        return Corpus(files: files, bytes: ByteSource(pieces: pieces, owner: mapping), fingerprint: hasher.finish())
    }

    /// The files `paths` name, in corpus order: each path in turn; a directory gives every
    /// regular file below it, hidden names skipped, in byte-wise sorted path order.
    public static func list(_ paths: [String], flag: String, host: String) throws -> [String] {
        var files: [String] = []
        for given in paths {
            let path = given.count > 1 && given.hasSuffix("/") ? String(given.dropLast(given.reversed().prefix { $0 == "/" }.count)) : given
            var status = stat()
            guard stat(path, &status) == 0 else {
                if errno == ENOENT || errno == ENOTDIR {
                    throw FileError("data file \(given) not found on \(host); pass \(flag) with a path readable on every host")
                }
                throw FileError("data path \(given) cannot be read (\(String(cString: strerror(errno)))); fix its permissions or leave it out of \(flag)")
            }
            switch status.st_mode & S_IFMT {
            case S_IFREG:
                files.append(path)
            case S_IFDIR:
                let inside = try walk(path, flag: flag).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
                if inside.isEmpty {
                    throw FileError("data directory \(given) holds no files (hidden names are skipped); put text files in it or leave it out of \(flag)")
                }
                files += inside
            default:
                throw FileError("data path \(given) is neither a regular file nor a directory; pass files or directories to \(flag)")
            }
        }
        return files
    }

    /// Regular files below `directory`. Symbolic links to files count; links to directories
    /// are not followed (no cycles, no file reached twice).
    private static func walk(_ directory: String, flag: String) throws -> [String] {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw FileError("data directory \(directory) cannot be listed (\(error.localizedDescription)); fix its permissions or leave it out of \(flag)")
        }
        var files: [String] = []
        for name in names where !name.hasPrefix(".") {
            let path = directory + "/" + name
            var link = stat(), target = stat()
            guard lstat(path, &link) == 0 else { continue }
            if link.st_mode & S_IFMT == S_IFDIR {
                files += try walk(path, flag: flag)
            } else if stat(path, &target) == 0 && target.st_mode & S_IFMT == S_IFREG {
                files.append(path)
            }
        }
        return files
    }

    /// Hashes the first and last `fingerprintSpan` bytes (all of a smaller file) with pread,
    /// so the fingerprint leaves no pages mapped.
    private static func hashEnds(of fd: Int32, path: String, size: Int, into hasher: inout FingerprintHasher,
                                 scratch: inout [UInt8], flag: String) throws {
        let head = min(size, fingerprintSpan)
        let tailStart = max(head, size - fingerprintSpan)
        for (offset, length) in [(0, head), (tailStart, size - tailStart)] where length > 0 {
            try scratch.withUnsafeMutableBytes { buffer in
                var done = 0
                while done < length {
                    let n = pread(fd, buffer.baseAddress! + done, length - done, off_t(offset + done))
                    guard n > 0 else {
                        throw FileError("data file \(path) cannot be read (\(n < 0 ? String(cString: strerror(errno)) : "shorter than its size")); fix it or leave it out of \(flag)")
                    }
                    done += n
                }
                hasher.add(UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
            }
        }
    }
}

/// Routes the SIGBUS guard's message: `prefix` names the rank and host under MPI; the process
/// exits with `code`.
public func configureCorpusGuard(prefix: String, code: Int32) {
    goml_corpus_guard_configure(prefix, code)
}

/// A fast 64-bit hash over words, for fingerprints (not cryptographic).
struct FingerprintHasher {
    private var state: UInt64 = 0x9E37_79B9_7F4A_7C15

    mutating func add(_ word: UInt64) {
        state = (state ^ (word &* 0xC2B2_AE3D_27D4_EB4F))
        state = ((state << 31) | (state >> 33)) &* 0x9E37_79B9_7F4A_7C15 &+ 0x1656_67B1_9E37_79F9
    }

    mutating func add(_ bytes: UnsafeRawBufferPointer) {
        let words = bytes.count / 8
        for i in 0..<words { add(bytes.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) }
        var last: UInt64 = UInt64(bytes.count - words * 8)
        for i in (words * 8)..<bytes.count { last = last << 8 | UInt64(bytes[i]) }
        add(last)
    }

    func finish() -> UInt64 {
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
