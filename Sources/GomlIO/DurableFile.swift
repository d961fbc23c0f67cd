// DurableFile: writes that survive a crash at any instant. A file is written to a temporary
// name in the same directory, flushed and fsynced, renamed over the target, and the
// directory is fsynced, so readers see either the old complete file or the new one.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct FileError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum DurableFile {
    /// Atomically replaces `path` with `bytes`.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = (directory.isEmpty ? "." : directory) + "/.\((path as NSString).lastPathComponent).tmp-\(hostName)-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw FileError("\(path): cannot create \(temporary) (\(String(cString: strerror(errno))))") }
        var written = 0
        let ok: Bool = bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + written, raw.count - written)
                if n < 0 { if errno == EINTR { continue }; return false }
                written += n
            }
            return fsync(fd) == 0
        }
        let error = String(cString: strerror(errno))
        close(fd)
        guard ok else {
            unlink(temporary)
            throw FileError("\(path): write failed (\(error)); the previous file is untouched")
        }
        guard rename(temporary, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(temporary)
            throw FileError("\(path): cannot rename into place (\(e))")
        }
        syncDirectory(directory.isEmpty ? "." : directory)
    }

    /// fsync on the directory makes a rename inside it durable.
    /// Part of a temporary file's name: writers on several hosts (checkpoint replicas on a
    /// shared filesystem) may write the same path, and their process ids may coincide.
    static let hostName: String = {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        return String(cString: name)
    }()

    public static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY)
        if fd >= 0 { fsync(fd); close(fd) }
    }
}
