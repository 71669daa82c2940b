// The Function app: Flex Consumption (FC1, Linux, Python 3.11), HTTPS only, TLS 1.2, FTP and basic
// publishing credentials off, running as the user-assigned identity for everything (host storage,
// deployment package, Application Insights ingestion, Key Vault references). Its app settings are the
// bridge's settings (bridge.config.SETTINGS and the built-in adapters' declarations: ServiceNow, Jira)
// plus the documented platform settings; tests/infra checks that the lists cannot drift apart.
param name string
param planName string
param location string
param tags object

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string
@description('Client id of that identity (AzureWebJobsStorage__clientId, Entra ingestion, AZURE_CLIENT_ID).')
param identityClientId string

param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string

@allowed([2048, 4096])
param instanceMemoryMB int = 2048
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
@minValue(0)
@maxValue(10)
@description('Always-ready instances for the HTTP functions (the "http" group: alerts and health); 0: none, every instance on demand.')
param alwaysReadyInstances int = 0

@description('Accepted token audiences: the webhook app\'s client id (v2 tokens) and Application ID URI (v1 tokens).')
param authAudiences array
@description('Accepted caller app ids; Azure Monitor action groups first.')
param authAllowedAppIds array
param authRequiredRole string
@description('ALLOWED_SUBSCRIPTION_IDS; empty: setting omitted (alerts from any subscription).')
param allowedSubscriptionIds string

@description('ITSM_ADAPTER: servicenow, jira, or a plugin adapter\'s name.')
param itsmAdapter string

@description('Empty: setting omitted.')
param servicenowInstanceUrl string
@description('Empty: setting omitted.')
param servicenowUsername string
@description('Empty: setting omitted.')
param servicenowClientId string
@description('Versionless Key Vault secret URI of the password; empty: SERVICENOW_PASSWORD omitted.')
param servicenowPasswordSecretUri string
@description('Versionless Key Vault secret URI of the OAuth client secret; empty: SERVICENOW_CLIENT_SECRET omitted.')
param servicenowClientSecretSecretUri string

@description('Empty: setting omitted.')
param jiraBaseUrl string
@allowed([
  'cloud'
  'datacenter'
])
@description('JIRA_DEPLOYMENT; set only when itsmAdapter is jira.')
param jiraDeployment string
@description('Empty: setting omitted.')
param jiraEmail string
@description('Empty: setting omitted.')
param jiraProject string
@description('Versionless Key Vault secret URI of the Jira Cloud API token; empty: JIRA_API_TOKEN omitted.')
param jiraApiTokenSecretUri string
@description('Versionless Key Vault secret URI of the Jira Data Center PAT; empty: JIRA_PAT omitted.')
param jiraPatSecretUri string

param stateTableName string
param outboxQueueName string

@description('Further non-secret bridge settings; the derived settings below win on a clash.')
param bridgeSettings object = {}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Zone redundancy on Flex Consumption is a per-region cost choice; Azure Monitor retries 408/429/503/504 during an outage.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Action group webhooks only reach public endpoints; every request is authenticated by the Entra bearer token check in code.
  // checkov:skip=CKV_AZURE_17: Azure Monitor presents an Entra bearer token, not a client certificate.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales by instance count (functionAppConfig.scaleAndConcurrency); there is no worker-count setting.
  // checkov:skip=CKV_AZURE_213: /api/health is function-key protected, and platform health checks would add no signal on Flex Consumption.
  name: name
  location: location
  // azd finds the deploy target of service "api" (azure.yaml) by this tag.
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
        // Azure Monitor waits about 10 s for the webhook; a cold start plus the first signing-key fetch
        // eats into that. An always-ready instance is billed around the clock (see infra/README.md).
        // 0 sends an empty list, which also removes an always-ready instance set by an earlier deployment.
        alwaysReady: (alwaysReadyInstances == 0) ? [] : [
          {
            name: 'http'
            instanceCount: alwaysReadyInstances
          }
        ]
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No FTP and no basic-auth (publishing profile) deployments: azd and Core Tools deploy with Entra tokens.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// Platform settings (see tests/infra PLATFORM_SETTINGS): identity-based host storage, Entra-only
// Application Insights ingestion, and the identity azure-identity's DefaultAzureCredential picks.
var platformSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
  AZURE_CLIENT_ID: identityClientId
}

// Bridge settings every deployment provides.
var bridgeBaseSettings = {
  AUTH_TENANT_ID: tenant().tenantId
  AUTH_AUDIENCES: join(authAudiences, ',')
  AUTH_ALLOWED_APP_IDS: join(authAllowedAppIds, ',')
  AUTH_REQUIRED_ROLE: authRequiredRole
  ITSM_ADAPTER: itsmAdapter
  // State records in the Table and the outbox on the Queue (the queue trigger reads
  // %OUTBOX_QUEUE_NAME%), both through the identity-based AzureWebJobsStorage connection.
  STATE_STORE: 'azure'
  STATE_TABLE_NAME: stateTableName
  OUTBOX_QUEUE_NAME: outboxQueueName
}

// Bridge settings that exist only when their value does: each ITSM's settings (so either can be
// deployed), basic-only or OAuth-only and Jira Cloud or Data Center credentials, any subscription.
// Secrets are Key Vault references resolved with keyVaultReferenceIdentity. JIRA_DEPLOYMENT goes with
// itsmAdapter jira (the comparison is parenthesized: pycep-parser, in tests/infra and checkov, would
// otherwise misread the precedence).
var bridgeOptionalSettings = union(
  empty(allowedSubscriptionIds) ? {} : { ALLOWED_SUBSCRIPTION_IDS: allowedSubscriptionIds },
  empty(servicenowInstanceUrl) ? {} : { SERVICENOW_INSTANCE_URL: servicenowInstanceUrl },
  empty(servicenowUsername) ? {} : { SERVICENOW_USERNAME: servicenowUsername },
  empty(servicenowPasswordSecretUri) ? {} : { SERVICENOW_PASSWORD: '@Microsoft.KeyVault(SecretUri=${servicenowPasswordSecretUri})' },
  empty(servicenowClientId) ? {} : { SERVICENOW_CLIENT_ID: servicenowClientId },
  empty(servicenowClientSecretSecretUri) ? {} : { SERVICENOW_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${servicenowClientSecretSecretUri})' },
  empty(jiraBaseUrl) ? {} : { JIRA_BASE_URL: jiraBaseUrl },
  (itsmAdapter =~ 'jira') ? { JIRA_DEPLOYMENT: jiraDeployment } : {},
  empty(jiraEmail) ? {} : { JIRA_EMAIL: jiraEmail },
  empty(jiraApiTokenSecretUri) ? {} : { JIRA_API_TOKEN: '@Microsoft.KeyVault(SecretUri=${jiraApiTokenSecretUri})' },
  empty(jiraPatSecretUri) ? {} : { JIRA_PAT: '@Microsoft.KeyVault(SecretUri=${jiraPatSecretUri})' },
  empty(jiraProject) ? {} : { JIRA_PROJECT: jiraProject }
)

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: This is the app settings resource, not network config; see functionApp for why the endpoint is public.
  // checkov:skip=CKV_AZURE_13: Authentication is the bridge's own Entra JWT validation (CONTRACT: ANONYMOUS auth level, token checked in code).
  // checkov:skip=CKV_AZURE_63: IIS HTTP logs do not exist on Linux Flex Consumption; requests go to Application Insights.
  // checkov:skip=CKV_AZURE_65: IIS detailed error pages do not exist on Linux Flex Consumption; errors go to Application Insights.
  // checkov:skip=CKV_AZURE_66: IIS failed request tracing does not exist on Linux Flex Consumption; failures go to Application Insights.
  // checkov:skip=CKV_AZURE_80: Python app; no .NET Framework version applies.
  // checkov:skip=CKV_AZURE_88: Flex Consumption has no Azure Files content share; the package lives in the deployment blob container.
  parent: functionApp
  name: 'appsettings'
  // Later objects win: caller-supplied bridgeSettings can never replace a derived or platform setting.
  properties: union(bridgeSettings, bridgeOptionalSettings, bridgeBaseSettings, platformSettings)
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
