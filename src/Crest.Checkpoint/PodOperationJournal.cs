using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;
using Crest.Core;
using Crest.Linux;

namespace Crest.Checkpoint;

/// <summary>
/// What a CheckpointPod or RestorePod in progress would leave half-made if crestd died: one small file per call under
/// <c>&lt;root&gt;/pod-operations/</c>, written before the first side effect and removed when the call ends either way.
/// At start, crestd undoes what each remaining entry names (<see cref="PodCheckpointService.SweepInterrupted"/>,
/// <see cref="PodRestoreService.SweepInterruptedAsync"/>): a checkpoint's partial output, a restore's pod sandbox.
/// </summary>
public sealed class PodOperationJournal(CrestPaths paths)
{
    public sealed record Entry
    {
        public required string Kind { get; init; }
        /// <summary>CheckpointPod: the output directory, and whether Crest created it (else it was empty before).</summary>
        public string? Output { get; init; }
        public bool CreatedOutput { get; init; }
        /// <summary>RestorePod: the pod sandbox made for the restore, once it exists.</summary>
        public string? SandboxId { get; init; }
    }

    public const string CheckpointKind = "checkpoint";
    public const string RestoreKind = "restore";

    private string Dir => Path.Combine(paths.Root, "pod-operations");

    /// <summary>Records an operation; returns the token that updates and ends it.</summary>
    public string Begin(Entry entry)
    {
        Directory.CreateDirectory(Dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var token = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        Write(token, entry);
        return token;
    }

    public void Update(string token, Entry entry) => Write(token, entry);

    public void End(string token)
    {
        var path = Path.Combine(Dir, token + ".json");
        if (File.Exists(path))
        {
            File.Delete(path);
        }
    }

    /// <summary>The entries crestd left when it died (call only before serving); unreadable ones are removed.</summary>
    public IReadOnlyList<(string Token, Entry Entry)> Interrupted()
    {
        if (!Directory.Exists(Dir))
        {
            return [];
        }

        var result = new List<(string, Entry)>();
        foreach (var file in Directory.EnumerateFiles(Dir, "*.json"))
        {
            var token = Path.GetFileNameWithoutExtension(file);
            try
            {
                if (FileKinds.IsRegularFile(file) && JsonSerializer.Deserialize(File.ReadAllBytes(file), PodOperationJournalJson.Default.Entry) is { } entry)
                {
                    result.Add((token, entry));
                    continue;
                }
            }
            catch (JsonException)
            {
            }

            File.Delete(file);
        }

        return result;
    }

    private void Write(string token, Entry entry)
    {
        var path = Path.Combine(Dir, token + ".json");
        var temp = path + ".tmp";
        File.WriteAllBytes(temp, JsonSerializer.SerializeToUtf8Bytes(entry, PodOperationJournalJson.Default.Entry));
        File.Move(temp, path, overwrite: true);
    }
}

[JsonSerializable(typeof(PodOperationJournal.Entry))]
internal sealed partial class PodOperationJournalJson : JsonSerializerContext;
