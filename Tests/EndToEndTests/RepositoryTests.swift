// The repository stands alone: a user's clone has only what is committed, so nothing may
// point outside the checkout, and everything the README links to must be inside it.

import Foundation
import XCTest

final class RepositoryTests: XCTestCase {
    /// Files git tracks, read from the work tree.
    private func trackedFiles() throws -> [String] {
        let r = Harness.run("/usr/bin/git", ["-C", Harness.packageRoot, "ls-files", "-z"], timeout: 60)
        XCTAssertEqual(r.status, 0, r.output)
        return r.stdout.split(separator: "\0").map(String.init)
    }

    func testNothingPointsOutsideTheCheckout() throws {
        let outside = ".." + "/shared"   // spelt in two parts so this file does not match itself
        var offenders: [String] = []
        for path in try trackedFiles() {
            guard let data = FileManager.default.contents(atPath: Harness.packageRoot + "/" + path) else {
                XCTFail("tracked file \(path) is missing from the work tree"); continue
            }
            if let text = String(data: data, encoding: .utf8), text.contains(outside) { offenders.append(path) }
        }
        XCTAssertEqual(offenders, [], "these files refer to \(outside), which a user's clone does not have")
    }

    func testEveryReadmeLinkResolvesInsideTheRepository() throws {
        let files = Set(try trackedFiles())
        for readme in files where readme.hasSuffix("README.md") || readme.hasPrefix("docs/") && readme.hasSuffix(".md") {
            let text = try String(contentsOfFile: Harness.packageRoot + "/" + readme, encoding: .utf8)
            let base = URL(fileURLWithPath: "/" + readme).deletingLastPathComponent()
            let links = try NSRegularExpression(pattern: #"\]\(([^)#\s]+)(#[^)]*)?\)"#)
            for match in links.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                let target = String(text[Range(match.range(at: 1), in: text)!])
                if target.contains("://") || target.hasPrefix("mailto:") { continue }
                let resolved = String(base.appendingPathComponent(target).standardized.path.dropFirst())
                let isDirectory = files.contains { $0.hasPrefix(resolved + "/") }
                XCTAssertTrue(files.contains(resolved) || isDirectory, "\(readme) links to \(target), which is not in the repository")
            }
        }
    }

    func testTheCorpusAndFixturesAreCommitted() throws {
        let files = Set(try trackedFiles())
        for needed in ["data/tinyshakespeare.txt", "data/README.md", "docs/model.md",
                       "Tests/Fixtures/tiny_step.safetensors", "Tests/Fixtures/tiny_clip.safetensors", "Tests/Fixtures/tiny_noclip.safetensors",
                       "Tests/Fixtures/tiny_long.safetensors"] {
            XCTAssertTrue(files.contains(needed), "\(needed) must be committed: tests, demo and docs read it")
        }
    }
}
