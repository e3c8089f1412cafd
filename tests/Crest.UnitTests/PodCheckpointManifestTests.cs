using System.Reflection;
using System.Text;
using Crest.Checkpoint.Format;
using Crest.Core;

namespace Crest.UnitTests;

/// <summary>pod.json's enums are camelCase names; its serializer is generated (Native AOT) and names each enum's converter.</summary>
public class PodCheckpointManifestTests
{
    [Fact]
    public void Every_enum_in_pod_json_is_written_as_its_camel_case_name_and_read_back()
    {
        var manifest = new PodCheckpointManifest
        {
            CheckpointedAt = DateTimeOffset.UnixEpoch,
            SandboxId = "0123456789abcdef",
            Pod = new PodSpec { Name = "web", Uid = "uid-web", Namespace = "default", Namespaces = new NamespaceOptions(Network: NamespaceMode.Node) },
            Containers =
            [
                new PodCheckpointContainer
                {
                    Name = "app",
                    Id = "c0ffee",
                    Spec = new ContainerSpec
                    {
                        Name = "app",
                        Image = "busybox",
                        Security = new SecuritySpec { Seccomp = SeccompMode.RuntimeDefault, SupplementalGroupsPolicy = SupplementalGroupsPolicy.Strict },
                    },
                },
            ],
        };

        var bytes = PodCheckpointManifests.Serialize(manifest);
        var text = Encoding.UTF8.GetString(bytes);
        var read = PodCheckpointManifests.Parse(bytes, null);

        Assert.Contains("\"network\": \"node\"", text, StringComparison.Ordinal);
        Assert.Contains("\"seccomp\": \"runtimeDefault\"", text, StringComparison.Ordinal);
        Assert.Contains("\"supplementalGroupsPolicy\": \"strict\"", text, StringComparison.Ordinal);
        Assert.Equal(NamespaceMode.Node, read.Pod.Namespaces.Network);
        Assert.Equal(SeccompMode.RuntimeDefault, read.Containers[0].Spec.Security.Seccomp);
        Assert.Equal(SupplementalGroupsPolicy.Strict, read.Containers[0].Spec.Security.SupplementalGroupsPolicy);
    }

    [Fact]
    public void The_manifest_reaches_only_the_enums_whose_converters_pod_json_names()
    {
        var found = new HashSet<Type>();
        Walk(typeof(PodCheckpointManifest), found, []);

        // A new enum under PodSpec or ContainerSpec needs its JsonStringEnumConverter in PodCheckpointManifests, or it
        // is written as a number.
        Assert.Equal(
            new[] { nameof(NamespaceMode), nameof(SeccompMode), nameof(SupplementalGroupsPolicy) }.Order(StringComparer.Ordinal),
            found.Select(t => t.Name).Order(StringComparer.Ordinal));
    }

    private static void Walk(Type type, HashSet<Type> enums, HashSet<Type> seen)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        if (type.IsEnum)
        {
            enums.Add(type);
            return;
        }

        if (type == typeof(string) || type.IsPrimitive || !seen.Add(type))
        {
            return;
        }

        if (type.IsGenericType)
        {
            foreach (var argument in type.GetGenericArguments())
            {
                Walk(argument, enums, seen);
            }
        }

        if (type.Namespace?.StartsWith("Crest", StringComparison.Ordinal) == true)
        {
            foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
            {
                Walk(property.PropertyType, enums, seen);
            }
        }
    }
}
